"""llem's container image per backend: what the container launcher runs and the doctor looks for."""

from __future__ import annotations

# docker/<backend>/Dockerfile builds each (docs/containers.md).
DEFAULT_IMAGES: dict[str, str] = {
    "pytorch": "llem-pytorch:latest",
    "vllm": "llem-vllm:latest",
    "tensorrt": "llem-tensorrt:latest",
}
