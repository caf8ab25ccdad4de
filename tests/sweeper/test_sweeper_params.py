"""`hydra.sweeper.params` as extra axes: from the command line in the documented form, and refused when malformed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.llem_sweeper._core import params_overrides
from llem.campaign import CampaignError
from llem.plan.manifest import read_manifest


@pytest.mark.slow  # runs `python -m llem` in a subprocess
def test_params_on_the_command_line_become_axes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llem", "-m", 'hydra.sweeper.params={backend.batch_size: "1,2"}',
         "campaign.execution.cycles=1", "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    jobs = read_manifest(tmp_path / "sweep" / ".state" / "campaign_manifest.json").jobs
    assert [j.params["backend.batch_size"] for j in jobs] == ["1", "2"]


def test_params_from_a_config_node_and_plain_values() -> None:
    node = OmegaConf.create({"backend.batch_size": "1,4", "fp_precision": "float16", "phase": True, "n": 3})
    assert params_overrides(node) == ["backend.batch_size=1,4", "fp_precision=float16", "phase=true", "n=3"]
    assert params_overrides(None) == []


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ([1, 2], "hydra.sweeper.params: expected a mapping"),
        ("backend.batch_size=1,2", "hydra.sweeper.params: expected a mapping"),
        ({"backend.batch_size": [1, 2]}, "hydra.sweeper.params.backend.batch_size: expected the values as one string"),
        ({"backend.batch_size": None}, "hydra.sweeper.params.backend.batch_size: expected the values as one string"),
    ],
)
def test_malformed_params_are_refused_with_the_key(params: object, said: str) -> None:
    with pytest.raises(CampaignError, match=said.replace(".", r"\.")):
        params_overrides(params)
