"""README's quick start, run as written in fresh settings: a new venv, and Debian's own python3
(externally managed: pip refuses) as root without a venv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
QUICK_START = README[README.index("## Quick start"):README.index("## Commands")]
BLOCKS = re.findall(r"```(sh|text)\n(.*?)```", QUICK_START, re.S)
COMMAND = next(body for kind, body in BLOCKS if kind == "sh").strip()
SHOWN = next(body for kind, body in BLOCKS if kind == "text").strip()
DEBIAN_PYTHON = Path("/usr/bin/python3")


def fresh_clone(tmp_path: Path) -> Path:
    """The committed files of this checkout (as `git clone` gives them), nothing else."""
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, clone / name)
    return clone


def run_quick_start(clone: Path, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # As written, but the output goes under tmp_path, not a /tmp shared with other runs.
    out = tmp_path / "windows-azure.vhd"
    command = COMMAND.replace("/tmp/windows-azure.vhd", str(out))
    proc = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == SHOWN.replace("/tmp/windows-azure.vhd", str(out))
    assert out.stat().st_size == 10 * 1024 * 1024 + 512
    return proc


def test_quick_start_in_a_new_venv(tmp_path):
    venv = tmp_path / "venv"
    # The dependencies come from this interpreter's site (nothing big to download: only the
    # build backend, which pip caches); the install of vhdtool is install.sh's real `pip install .`.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    clone = fresh_clone(tmp_path)
    run_quick_start(clone, tmp_path, env)
    assert not (clone / ".venv").exists()  # the active venv was used
    installed = subprocess.run([venv / "bin" / "vhdtool", "--version"], capture_output=True, text=True)
    assert installed.stdout == "vhdtool 0.1.0\n"


def debian_externally_managed() -> bool:
    if not DEBIAN_PYTHON.exists():
        return False
    stdlib = subprocess.run([DEBIAN_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not debian_externally_managed(),
                    reason="needs root and Debian's externally managed /usr/bin/python3")
def test_quick_start_with_debians_python_as_root(tmp_path):
    # Debian's python3 first on PATH, no venv active: install.sh must make ./.venv itself.
    # Downloads the dependencies from PyPI (pip's cache makes later runs quick).
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYENV_VERSION"):
        env.pop(name, None)
    refused = subprocess.run([DEBIAN_PYTHON, "-m", "pip", "install", "--dry-run", "--no-deps", str(ROOT)],
                             env=env, capture_output=True, text=True)
    assert "externally-managed-environment" in refused.stderr  # why install.sh exists
    clone = fresh_clone(tmp_path)
    proc = run_quick_start(clone, tmp_path, env)
    assert (clone / ".venv" / "bin" / "vhdtool").exists()
    assert "vhdtool is in ./.venv" in proc.stderr


def fake_tools(tmp_path: Path, uid: int) -> dict[str, str]:
    """PATH with Debian's python3 lacking ensurepip (no python3-venv), `id -u` answering `uid`,
    and an apt-get that only records its arguments: the set-up's decisions, simulated."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        '#!/bin/sh\n[ "$2" = "import ensurepip" ] && exit 1\nexec /usr/bin/python3 "$@"\n')
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "apt.log"}\n[ "$1" = update ] || exit 9\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.mark.skipif(not debian_externally_managed(), reason="needs Debian's externally managed /usr/bin/python3")
@pytest.mark.parametrize("uid", [0, 1000])
def test_without_python3_venv(tmp_path, uid):
    clone = fresh_clone(tmp_path)
    proc = subprocess.run(["bash", "install.sh"], cwd=clone, env=fake_tools(tmp_path, uid), capture_output=True, text=True)
    apt = tmp_path / "apt.log"
    if uid:  # a normal user is told what to install; nothing is tried
        assert proc.returncode == 2 and not apt.exists()
        assert proc.stderr == ("install.sh: needs Debian packages python3-venv: run as root or "
                               "'sudo apt-get install python3-venv'\n")
    else:  # root installs it (the fake apt-get's install then fails, which stops the script)
        assert proc.returncode == 9 and apt.read_text().splitlines() == ["update -qq", "install -y -qq python3-venv"]
    assert not (clone / ".venv").exists()
