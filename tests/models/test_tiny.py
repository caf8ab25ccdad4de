"""The built-in tiny model: deterministic, cached, atomic, loadable through the ordinary HF API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llem.config.experiment import ModelConfig  # noqa: E402
from llem.models import tiny  # noqa: E402
from llem.models.resolve import builtin_model_names, resolve_model_path  # noqa: E402
from llem.models.tiny import MARKER_FILE, ensure_tiny_model, tiny_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llem-cache")


@pytest.fixture(scope="module")
def tiny_dir(cache_root: Path) -> Path:
    return ensure_tiny_model(cache_root)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_layout_and_config(tiny_dir: Path) -> None:
    assert tiny_dir == tiny_model_dir(tiny_dir.parent.parent, 0)
    assert tiny_dir.name.startswith("tiny-")
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER_FILE):
        assert (tiny_dir / name).is_file(), name
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["torch_dtype"] == "float32"
    assert cfg["tie_word_embeddings"] is False
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64
    assert cfg["head_dim"] == 64
    assert (cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["max_position_embeddings"]) == (2, 256, 2048)
    assert 1500 <= cfg["vocab_size"] <= 2100
    assert _siblings(tiny_dir) == [tiny_dir.name]  # no temp directories left behind
    assert tiny_dir.stat().st_mode & 0o777 == 0o755


def test_loads_with_auto_classes_and_generates(tiny_dir: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.head_dim == 64
    assert model.dtype == torch.float32
    assert len(tok) == model.config.vocab_size
    assert tok.chat_template is None
    assert model.generation_config.eos_token_id == tok.eos_token_id == model.config.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.bos_token_id != tok.eos_token_id != tok.pad_token_id

    enc = tok("What is the capital of Australia?", return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id  # Llama-style BOS by default
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 5)
    text = "def f(x):\n    return x + 1  # ünïcode"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_deterministic_across_builds(tiny_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    other = ensure_tiny_model(tmp_path)
    assert torch.equal(torch.rand(3), expected)  # building does not consume the caller's RNG stream
    assert other.name == tiny_dir.name
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_seed_changes_weights_and_folder(tiny_dir: Path, tmp_path: Path) -> None:
    other = ensure_tiny_model(tmp_path, seed=1)
    assert other.name != tiny_dir.name
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()


def test_second_call_uses_the_cache(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tiny_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_build(out: Path, seed: int) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(tiny, "_build", no_build)
    assert ensure_tiny_model(tiny_dir.parent.parent) == tiny_dir
    assert weights.stat().st_mtime_ns == before


def test_default_cache_dir_from_env(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tiny_dir.parent.parent))
    monkeypatch.setattr(tiny, "_build", lambda out, seed: pytest.fail("rebuilt"))
    assert ensure_tiny_model() == tiny_dir
    monkeypatch.delenv("LLEM_CACHE_DIR")
    assert tiny.default_cache_dir() == Path.home() / ".cache" / "llem"


def test_concurrent_builder_that_won_is_kept(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tiny_model_dir(tmp_path)
    real_build = tiny._build

    def build_then_lose_race(out: Path, seed: int) -> None:
        real_build(out, seed)
        shutil.copytree(tiny_dir, target)  # another process publishes first
        (target / "winner").write_text("x")

    monkeypatch.setattr(tiny, "_build", build_then_lose_race)
    assert ensure_tiny_model(tmp_path) == target
    assert (target / "winner").exists()
    assert _siblings(target) == [target.name]


def test_stale_incomplete_folder_is_replaced(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tiny_model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # interrupted copy: no marker
    monkeypatch.setattr(tiny, "_build", lambda out, seed: shutil.copytree(tiny_dir, out, dirs_exist_ok=True))
    assert ensure_tiny_model(tmp_path) == target
    assert (target / MARKER_FILE).is_file()
    assert (target / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert _siblings(target) == [target.name]


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path, seed: int) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny, "_build", broken)
    with pytest.raises(RuntimeError, match="boom"):
        ensure_tiny_model(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_resolve_builtin_tiny(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tiny_dir.parent.parent))
    assert resolve_model_path(ModelConfig(name="builtin:tiny")) == str(tiny_dir)


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.2-1B", "./models/my-model", "/abs/path/model"])
def test_resolve_passes_other_names_through(name: str) -> None:
    assert resolve_model_path(ModelConfig(name=name)) == name


def test_resolve_unknown_builtin_lists_builtins() -> None:
    assert builtin_model_names() == ["builtin:tiny"]
    with pytest.raises(ValueError, match=r"builtin:xyz.*builtin:tiny"):
        resolve_model_path(ModelConfig(name="builtin:xyz"))


@pytest.mark.slow  # a real run in a fresh process: seconds, not a unit test
def test_deterministic_in_a_fresh_process(tiny_dir: Path, tmp_path: Path) -> None:
    """Another interpreter (different hash seed) must build byte-identical files."""
    code = (
        "import sys; from pathlib import Path; from llem.models.tiny import ensure_tiny_model; "
        "print(ensure_tiny_model(Path(sys.argv[1])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, check=True
    )
    other = Path(out.stdout.strip().splitlines()[-1])
    assert other.name == tiny_dir.name
    for name in ("model.safetensors", "tokenizer.json"):
        assert (other / name).read_bytes() == (tiny_dir / name).read_bytes(), name
