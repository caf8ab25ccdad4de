"""A tiny Hydra app for launcher tests: reports (without its value) whether a secret reached the job."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=None)
def main(cfg: DictConfig) -> bool:
    seen = os.environ.get("HF_TOKEN") == os.environ.get("EXPECTED_TOKEN_MARKER_CHECK", "")
    token = os.environ.get("HF_TOKEN")
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "token_seen.txt").write_text("yes" if token else "no")
    return bool(token) or seen


if __name__ == "__main__":
    main()
