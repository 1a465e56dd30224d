#!/usr/bin/env bash
# Install everything the tests need (only what is missing), then run them.
#   Debian: qemu-utils (qemu-img, qemu-io), libvhdi-utils (vhdiinfo), python3-libvhdi (pyvhdi),
#           npm (Node.js for Azurite), fdisk and gdisk (partition fixtures), time (GNU time),
#           python3-venv where python3 is externally managed
#   PyPI:   vhdtool itself with its [test] and [plot] extras (pytest, hypothesis, ruff, mypy, matplotlib)
#   npm:    Azurite, pinned, into ./.azurite
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

. ./python-env.sh  # where python3 is externally managed, the Python tools go into ./.venv

missing=()
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || missing+=(qemu-utils)
command -v vhdiinfo >/dev/null || missing+=(libvhdi-utils)
/usr/bin/python3 -c 'import pyvhdi' 2>/dev/null || missing+=(python3-libvhdi)
command -v npm >/dev/null || missing+=(npm)  # Azurite runs on Node.js
[ -x /usr/sbin/sfdisk ] && [ -x /usr/sbin/fdisk ] || missing+=(fdisk)  # partition fixtures
[ -x /usr/sbin/sgdisk ] || missing+=(gdisk)  # partition fixtures
[ -x /usr/bin/time ] || missing+=(time)  # GNU time: peak memory in the bench tests
missing+=($(venv_packages))
apt_install tests/run.sh ${missing[@]+"${missing[@]}"}

python=$(venv_python)
"$python" -m pip install -q -e '.[test,plot]' --config-settings editable_mode=compat  # a path entry, not an import hook: faster CLI start
"$python" tests/azurite.py install >/dev/null
"$python" -m ruff check vhdtool tests benchmarks fixtures; "$python" -m mypy  # lint and types (pyproject.toml) before the tests (set -e: each stops the run)
exec "$python" -m pytest -q "$@"
