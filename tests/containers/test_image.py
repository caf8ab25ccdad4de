"""The offline CPU test image runs llem: a real container (podman), no network, results on the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.containers import image

pytestmark = [pytest.mark.container, pytest.mark.slow]

N_PROMPTS = 2
MAX_OUTPUT_TOKENS = 3


@pytest.fixture(scope="module")
def test_cpu_image() -> str:
    image.skip_unless_engine()
    return image.test_image()


@pytest.mark.timeout(image.BUILD_TIMEOUT_S + 300)
def test_llem_runs_in_the_test_image(test_cpu_image: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    # Mounted at the same absolute path, as the container launcher mounts the sweep dir.
    logs = image.client().run(
        test_cpu_image,
        [
            "python", "-m", "llem",
            f"num_input_prompts={N_PROMPTS}",
            f"max_output_tokens={MAX_OUTPUT_TOKENS}",
            "warmup.num_prompts=0",
            "baseline.enabled=false",
            f"hydra.run.dir={out}",
        ],
        volumes=[(str(out), str(out), "rw")],
        networks=["none"],
        remove=True,
    )

    result_path = out / "result.json"
    assert result_path.is_file(), f"no result.json on the host; container output:\n{logs}"
    result = json.loads(result_path.read_text())
    assert result["model"] == "builtin:tiny"
    assert result["backend"] == "pytorch"
    assert result["num_prompts"] == N_PROMPTS
    # force_output_length is on by default: every prompt yields exactly max_output_tokens.
    assert result["output_tokens"] == N_PROMPTS * MAX_OUTPUT_TOKENS


def test_image_has_llem_and_the_hydra_plugins(test_cpu_image: str) -> None:
    out = image.client().run(
        test_cpu_image,
        ["python", "-c", "import llem, hydra_plugins, torch; print(llem.__file__, torch.__version__)"],
        networks=["none"],
        remove=True,
    )
    assert "/opt/llem-venv/" in out  # installed into the venv, not run from a source tree
    assert "+cpu" in out
