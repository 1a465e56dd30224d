#!/usr/bin/env bash
# Install vhdtool from this clone, then run `vhdtool ARGS...` if arguments are given.
#   PyPI:   vhdtool and its dependencies (construct, numpy, typer, tqdm, azure-storage-blob,
#           azure-identity, crc32c), into the active venv, or into python3's site when it takes them,
#           or else into ./.venv
#   Debian: python3-venv, via apt-get, when ./.venv is needed and python3 cannot make it (as root)
# Nothing is written outside the clone except by pip into an active venv or python3's own site.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
. ./python-env.sh

# shellcheck disable=SC2046  # venv_packages prints zero or one word
apt_install install.sh $(venv_packages)
python=$(venv_python)
"$python" -m pip install -q .
if [ "$python" != python3 ]; then
  echo "install.sh: vhdtool is in ./.venv: run it as .venv/bin/vhdtool, or after '. .venv/bin/activate'" >&2
fi
if (($#)); then
  exec "$python" -m vhdtool.cli "$@"
fi
