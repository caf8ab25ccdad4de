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


@pytest.mark.slow
def test_plain_editable_install_finds_the_plugins_and_runs_a_multirun(tmp_path: Path) -> None:
    """`pip install -e .` as the guide says (PEP 660, no compat mode): Hydra still finds llem's sweeper."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Dependencies (and the build backend) come from this interpreter's site-packages; PYTHONPATH does not
    # process .pth files, so only the new venv's own editable install puts the checkout on sys.path.
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    pth = "".join(p.read_text() for p in (env_dir / "lib").glob("python3*/site-packages/__editable__*.pth"))
    assert "import " not in pth, "the editable install uses an import hook that hides hydra_plugins from Hydra"
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    job = subprocess.run([str(py), "-m", "llem", "--cfg", "job"], env=env, cwd=run_dir, capture_output=True, text=True)
    assert job.returncode == 0, job.stderr
    assert "model:" in job.stdout and "backend:" in job.stdout
    sweep = run_dir / "sweep"
    multirun = subprocess.run(
        [str(py), "-m", "llem", "-m", "backend.batch_size=1,2", "num_input_prompts=2", "max_output_tokens=2",
         "max_input_tokens=16", "baseline.enabled=false", "campaign.execution.cycle_gap_seconds=0",
         "campaign.execution.warmup_prompts=0", "campaign.execution.config_gap_seconds=0", "campaign.execution.cycles=1",
         "campaign.health_check.enabled=false", f"hydra.sweep.dir={sweep}"],
        env=env, cwd=run_dir, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert multirun.returncode == 0, multirun.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/result.json")) == ["0", "1"]
    assert "llem_local" in (sweep / "multirun.yaml").read_text()  # llem's own launcher ran them
