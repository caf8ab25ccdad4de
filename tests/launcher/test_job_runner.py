"""The worker's lean run_job does what Hydra's run_job does: same JobReturn, files, env, cwd and callbacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import initialize_config_module
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus, setup_globals
from hydra.core.utils import run_job as hydra_run_job
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

from llem.launch import job_runner
from llem.launch.job_config import JobComposer
from llem.launch.job_config import numbered

SEEN: list[dict[str, Any]] = []


def task(cfg: Any) -> Any:
    """Records what a task sees: its config, the Hydra config, the cwd and the job's environment."""
    hydra = HydraConfig.get()
    SEEN.append({
        "cfg": OmegaConf.to_container(cfg, resolve=True), "struct": OmegaConf.is_struct(cfg),
        "output_dir": hydra.runtime.output_dir, "job_num": hydra.job.num, "cwd": os.getcwd(),
        "env": os.environ.get("LLEM_TEST_VAR"), "name": f"{cfg.experiment_name}",
    })  # fmt: skip
    if cfg.random_seed == 13:
        raise ValueError("seed 13 fails")
    return {"seed": cfg.random_seed}


@pytest.fixture()
def configs(tmp_path: Path) -> Iterator[Any]:
    with initialize_config_module(config_module="llem.conf", version_base="1.3", job_name="llem"):
        loader = GlobalHydra.instance().config_loader()
        setup_globals()

        def make(sweep: str, *overrides: str, chdir: bool = False) -> Any:
            master = loader.load_configuration(
                "config", [f"hydra.sweep.dir={tmp_path / sweep}", f"hydra.job.chdir={str(chdir).lower()}",
                           "+hydra.job.env_set.LLEM_TEST_VAR=set-for-the-job", "random_seed=1,2"], RunMode.MULTIRUN,
            )  # fmt: skip
            return numbered(JobComposer(loader, master).compose(list(overrides)), 7), master

        yield make


@pytest.mark.parametrize("chdir", [False, True])
@pytest.mark.parametrize("seed", [5, 13])
def test_same_outcome_as_hydra(configs: Any, tmp_path: Path, chdir: bool, seed: int) -> None:
    rets, dirs = [], []
    for runner, sweep in ((hydra_run_job, "hydra"), (job_runner.run_job, "lean")):
        config, master = configs(sweep, f"random_seed={seed}", "experiment_name=${backend.name}-x", chdir=chdir)
        context = HydraContext(config_loader=None, callbacks=Callbacks(master))
        cwd = os.getcwd()
        rets.append(runner(task_function=task, config=config, hydra_context=context,
                           job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        assert os.getcwd() == cwd and os.environ.get("LLEM_TEST_VAR") is None  # restored
        assert not HydraConfig.initialized()  # the previous (none) Hydra config is back
        dirs.append(tmp_path / sweep / "7")
    hydra_ret, lean_ret = rets
    seen_hydra, seen_lean = SEEN[-2], SEEN[-1]
    assert seen_lean["output_dir"] == str(dirs[1]) and seen_hydra["output_dir"] == str(dirs[0])
    assert seen_lean["cwd"] == (str(dirs[1]) if chdir else os.getcwd())
    for key in ("cfg", "struct", "job_num", "env", "name"):
        assert seen_lean[key] == seen_hydra[key], key
    assert lean_ret.status == hydra_ret.status == (JobStatus.FAILED if seed == 13 else JobStatus.COMPLETED)
    if seed == 13:
        assert str(lean_ret._return_value) == str(hydra_ret._return_value) == "seed 13 fails"
    else:
        assert lean_ret.return_value == hydra_ret.return_value == {"seed": seed}
    assert OmegaConf.to_container(lean_ret.cfg) == OmegaConf.to_container(hydra_ret.cfg)
    lean_hydra = OmegaConf.to_container(lean_ret.hydra_cfg)
    hydra_hydra = OmegaConf.to_container(hydra_ret.hydra_cfg)
    for ret_cfg, out in ((lean_hydra, dirs[1]), (hydra_hydra, dirs[0])):
        assert ret_cfg["hydra"]["runtime"].pop("output_dir") == str(out)  # type: ignore[index]
        ret_cfg["hydra"]["sweep"].pop("dir")  # type: ignore[index]
        ret_cfg["hydra"]["overrides"]["hydra"].pop(0)  # type: ignore[index]  # hydra.sweep.dir=<its own dir>
    assert lean_hydra == hydra_hydra
    assert lean_ret.overrides == hydra_ret.overrides and lean_ret.task_name == hydra_ret.task_name == "llem"
    assert (lean_ret.working_dir == str(dirs[1])) if chdir else (lean_ret.working_dir == hydra_ret.working_dir)
    for name in ("config.yaml", "overrides.yaml"):
        assert (dirs[1] / ".hydra" / name).read_text() == (dirs[0] / ".hydra" / name).read_text()
    assert (dirs[1] / ".hydra" / "hydra.yaml").is_file() and (dirs[1] / "llem.log").exists() == (
        dirs[0] / "llem.log").exists()

