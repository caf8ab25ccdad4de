"""The launcher's fast job composition gives exactly the config Hydra's load_sweep_config gives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from llem.launch.job_config import JobComposer

CASES = [
    ["random_seed=1"],
    ["backend=vllm", "random_seed=2"],
    ["backend.batch_size=4", "fp_precision=float16"],
    ["+extra.key=5", "random_seed=3"],
    ["++decoder.top_k=3", "random_seed=4"],
    ["~decoder.top_k", "random_seed=3"],
    ["experiment_name=${backend.name}-run", "max_output_tokens=${max_input_tokens}"],
    ["model=qwen2.5-0.5b", "backend.batch_size=2"],
    ["dataset=synthetic", "random_seed=7", "backend=vllm"],
    ["+hydra.job.env_set.FOO=bar", "random_seed=9"],  # a hydra override: Hydra's own path
]


@pytest.fixture(scope="module")
def loader_and_master() -> Iterator[tuple[Any, Any]]:
    with initialize_config_module(config_module="llem.conf", version_base="1.3", job_name="llem"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", ["hydra.sweep.dir=/tmp/llem-x", "hydra.job.chdir=false", "random_seed=1,2"], RunMode.MULTIRUN
        )
        yield loader, master


@pytest.mark.parametrize("overrides", CASES, ids=lambda c: " ".join(c))
def test_same_config_as_hydra(loader_and_master: tuple[Any, Any], overrides: list[str]) -> None:
    loader, master = loader_and_master
    composer = JobComposer(loader, master)
    composer.compose(["random_seed=0"])  # a cached base must not leak into the next job
    expected = OmegaConf.to_container(loader.load_sweep_config(master, overrides), resolve=False)
    got = composer.compose(overrides)
    assert OmegaConf.to_container(got, resolve=False) == expected
    assert OmegaConf.is_struct(got)
    slow = loader.load_sweep_config(master, overrides)
    assert _task(got) == _task(slow)  # what the job runs, interpolations resolved


def _task(config: Any) -> Any:
    return OmegaConf.to_container(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), resolve=True)


def test_one_composition_per_group_selection(loader_and_master: tuple[Any, Any]) -> None:
    loader, master = loader_and_master
    composer = JobComposer(loader, master)
    for seed in range(5):
        for backend in ("pytorch", "vllm"):
            composer.compose([f"backend={backend}", f"random_seed={seed}"])
    assert composer.compositions == 2
    first, second = composer.compose(["random_seed=1"]), composer.compose(["random_seed=2"])
    assert (first.random_seed, second.random_seed) == (1, 2)  # copies, not the cached base


def test_an_override_hydra_refuses_is_refused_the_same_way(loader_and_master: tuple[Any, Any]) -> None:
    loader, master = loader_and_master
    composer = JobComposer(loader, master)
    with pytest.raises(Exception, match="Could not override 'no_such_key'"):
        composer.compose(["no_such_key=1"])
    with pytest.raises(Exception, match="Could not override 'no_such_key'"):
        loader.load_sweep_config(master, ["no_such_key=1"])


@pytest.mark.parametrize("overrides", CASES[:-1], ids=lambda c: " ".join(c))
def test_a_planned_job_is_assembled_into_the_same_config(loader_and_master: tuple[Any, Any], overrides: list[str]
                                                         ) -> None:
    """A job a campaign planned is assembled from the plan's composition: the config Hydra gives, not recomposed."""
    from llem.launch.jobs import Job
    from llem.plan.compose import FastComposer

    loader, master = loader_and_master
    planned = FastComposer(loader, "config", list(OmegaConf.to_container(master.hydra.overrides.hydra)),
                           drop_keys=("campaign",))  # type: ignore[arg-type]
    planned.compose(["random_seed=0"])
    planned.compose(overrides)
    composition = planned.composition(overrides)
    assert composition is not None
    composer = JobComposer(loader, master)
    got = composer.for_job(Job(num=3, overrides=tuple(overrides), composition=composition))
    expected = loader.load_sweep_config(master, overrides)
    assert OmegaConf.to_container(got, resolve=False) == {
        **OmegaConf.to_container(expected, resolve=False),  # type: ignore[dict-item]
        "hydra": {**OmegaConf.to_container(expected.hydra, resolve=False),  # type: ignore[dict-item]
                  "job": {**OmegaConf.to_container(expected.hydra.job, resolve=False),  # type: ignore[dict-item]
                          "id": "llem_3", "num": 3}},
    }
    assert list(got.keys()) == list(expected.keys())
    assert OmegaConf.is_struct(got) and OmegaConf.get_type(got.hydra) is OmegaConf.get_type(expected.hydra)
    assert _task(got) == _task(expected)
    assert composer.compositions == 0  # nothing composed again
    assert composition.interpolated == ("${" in " ".join(overrides))


def test_hydra_overrides_are_not_assembled(loader_and_master: tuple[Any, Any]) -> None:
    """An override of the `hydra` node takes Hydra's own path, as in `compose`."""
    from llem.plan.compose import FastComposer

    loader, master = loader_and_master
    planned = FastComposer(loader, "config")
    planned.compose(["+hydra.job.env_set.FOO=bar", "random_seed=9"])
    assert planned.composition(["+hydra.job.env_set.FOO=bar", "random_seed=9"]) is None
