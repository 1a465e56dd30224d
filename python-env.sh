# Sourced by install.sh and tests/run.sh (run from the clone's root): which Python vhdtool goes into.
# Debian 12 keeps its python3 for apt (PEP 668, "externally managed": pip refuses): there, unless a
# venv is active, vhdtool goes into ./.venv, which needs Debian's python3-venv (ensurepip).

venv_needed() {
  local stdlib
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$stdlib/EXTERNALLY-MANAGED" ]
}

# The Debian packages the Python set-up lacks (none, or python3-venv), for the caller's apt-get.
venv_packages() {
  if venv_needed && [ ! -x .venv/bin/python3 ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo python3-venv
  fi
}

# The Python to install into: python3 itself, or ./.venv's (created here when missing).
venv_python() {
  if venv_needed; then
    [ -x .venv/bin/python3 ] || python3 -m venv .venv
    echo .venv/bin/python3
  else
    echo python3
  fi
}

# Install the Debian packages given (none: nothing to do), as root; otherwise say what to run.
# $1 names the caller in the message.
apt_install() {
  local caller=$1
  shift
  (($#)) || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$caller: needs Debian packages $*: run as root or 'sudo apt-get install $*'" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
