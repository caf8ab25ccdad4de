"""A fast stand-in for a measurement, for GPU packing tests: llem's own config (so each job's GPU need comes from
its backend settings, as for a real one), and a task that only records which GPUs it was given, and when."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="pkg://llem.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    began = time.time()
    time.sleep(float(os.environ.get("GPU_APP_SECONDS", "1")) * (1 + int(cfg.random_seed)))  # staggered ends
    record = {"gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "").split(","), "began": began, "ended": time.time(),
              "backend": cfg.backend.name, "pid": os.getpid()}
    (Path(HydraConfig.get().runtime.output_dir) / "gpus.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
