"""The fast composition path gives exactly what full Hydra composition gives, job by job."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from llem.plan.compose import ComposeError, FastComposer

SAMPLE_AXES = [
    ["backend=pytorch", "backend=vllm", "backend=tensorrt"],
    ["dataset=builtin", "dataset=synthetic"],
    ["fp_precision=float16", "fp_precision=bfloat16", "++fp_precision=float32"],
    ["decoder.temperature=0.5", "decoder={do_sample:true,top_k:5}", "+experiment_name=x y"],
    ["max_output_tokens=8", "~warmup", "energy.devices=[0,1]"],
]


def _full(overrides: list[str]) -> dict[str, Any]:
    cfg = compose(config_name="config", overrides=overrides)
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return data


def test_fast_path_matches_hydra_on_a_sample(loader: Any) -> None:
    rng = random.Random(3)
    composer = FastComposer(loader, "config")
    jobs = [[rng.choice(axis) for axis in SAMPLE_AXES] for _ in range(25)]
    for overrides in jobs:
        assert composer.compose(overrides) == _full(overrides), overrides
    assert composer.compositions <= 6  # one per distinct (backend, dataset) selection


def test_errors_match_hydra_semantics(loader: Any) -> None:
    composer = FastComposer(loader, "config")
    with pytest.raises(ComposeError, match="Could not override 'decoder.temprature'"):
        composer.compose(["decoder.temprature=1"])
    with pytest.raises(ComposeError, match="Could not append to config"):
        composer.compose(["+fp_precision=float16"])
    with pytest.raises(ComposeError, match="Could not delete"):
        composer.compose(["~nothing_here"])
    for bad in (["decoder.temprature=1"], ["+fp_precision=float16"], ["~nothing_here"]):
        with pytest.raises(Exception):
            _full(bad)


def test_interpolations_take_the_exact_path(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("a: 1\nb: ${a}\nnested:\n  c: ${b}\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        composer = FastComposer(GlobalHydra.instance().config_loader(), "config")
        for overrides in (["a=5"], ["a=7", "+d=${a}"], []):
            assert composer.compose(overrides) == _full(overrides)


def test_interpolations_in_job_overrides_are_planned_as_they_run(loader: Any) -> None:
    """A job value holding an interpolation resolves as in the job itself, so the planned hash is the run's."""
    composer = FastComposer(loader, "config")
    for overrides in (
        ["experiment_name=${backend.name}-run"],
        ["backend=vllm", "experiment_name=${backend.name}-${fp_precision}"],
        ["max_input_tokens=99", "max_output_tokens=${max_input_tokens}"],
    ):
        planned = composer.compose(overrides)
        assert planned == _full(overrides), overrides
        assert "${" not in str(planned)
