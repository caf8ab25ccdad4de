"""llem's container image per backend: what the container launcher runs and the doctor looks for."""

from __future__ import annotations

# docker/<backend>/Dockerfile builds each (docs/containers.md).
DEFAULT_IMAGES: dict[str, str] = {
    "pytorch": "llem-pytorch:latest",
    "vllm": "llem-vllm:latest",
    "tensorrt": "llem-tensorrt:latest",
}


def image_check_command(engine: str, image: str) -> list[str]:
    """The engine command that exits 0 exactly when `image` is present locally (no pull)."""
    return [engine, "image", "exists", image] if engine == "podman" else [engine, "image", "inspect", image]
