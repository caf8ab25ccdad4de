"""A non-editable wheel ships conf/ and composes a config outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_composes(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("llem-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # Dependencies come from this interpreter's site-packages; PYTHONPATH does not process .pth
    # files, so the editable checkout is not visible and the wheel's copy is what runs.
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    where = subprocess.run(
        [str(py), "-c", "import llem, llem.conf; print(llem.__file__)"], env=env, cwd=run_dir, capture_output=True, text=True
    )
    assert where.returncode == 0, where.stderr
    assert str(env_dir) in where.stdout
    proc = subprocess.run(
        [str(py), "-m", "llem", "backend=vllm", "--cfg", "job"], env=env, cwd=run_dir, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: vllm" in proc.stdout and "max_num_seqs: 256" in proc.stdout
    groups = subprocess.run(
        [str(py), "-m", "llem", "--info", "defaults"], env=env, cwd=run_dir, capture_output=True, text=True
    )
    assert "backend/pytorch" in groups.stdout and "model/tiny" in groups.stdout


def test_setuptools_package_list_is_complete() -> None:
    """Every llem package on disk is listed in pyproject (the list is explicit because conf/ is remapped)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "llem").rglob("__init__.py")}
    on_disk |= {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "hydra_plugins").rglob("__init__.py")}
    on_disk.add("llem.conf")
    assert on_disk - listed == set(), f"add to pyproject [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert not (REPO / "hydra_plugins" / "__init__.py").exists(), "hydra_plugins must stay a namespace package"
