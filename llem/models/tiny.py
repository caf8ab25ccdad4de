"""`builtin:tiny`: a small random-weight Llama built offline, so llem runs without any download.

The model is meant for exercising the measurement pipeline (every backend, CPU included), not for
sensible text. Everything is derived from the spec, the seed and the shipped prompt texts, so two
machines building it get byte-identical weights. Built once, then cached on disk:

    <cache>/models/tiny-<key>/   config.json, generation_config.json, model.safetensors,
                                 tokenizer.json, tokenizer_config.json, llem-tiny.json

`<cache>` is `$LLEM_CACHE_DIR` or `~/.cache/llem`; `<key>` hashes the spec, the seed, the training
corpus and the transformers major version (its file formats change between majors).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem.prompts.builtin import builtin_records

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Bump FORMAT when the build changes in a way the other fields do not capture.
TINY_SPEC: dict[str, Any] = {
    "format": 1,
    "architecture": "LlamaForCausalLM",
    "hidden_size": 128,
    "num_attention_heads": 2,  # head_dim 64: vLLM's CPU attention rejects smaller heads
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 2048,
    "tokenizer_vocab_size": 2000,
    "tokenizer_min_frequency": 2,
}

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS: tuple[str, ...] = (UNK, BOS, EOS, PAD)  # ids 0..3, in this order
MARKER_FILE = "llem-tiny.json"


def default_cache_dir() -> Path:
    """`$LLEM_CACHE_DIR`, else `~/.cache/llem`."""
    env = os.environ.get("LLEM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llem"


def training_corpus() -> list[str]:
    """Texts the tokenizer learns from: the built-in prompts plus numbers and code punctuation.

    Deterministic by construction; the extra lines give digits and symbols merges of their own.
    """
    texts = [r.prompt for r in builtin_records()]
    texts.append(" ".join(str(i) for i in range(1000)))
    texts.append(" ".join(f"{i}.{j}" for i in range(10) for j in range(10)))
    texts.append("() [] {} <> == != <= >= += -= -> => :: ... // /* */ # @ $ % ^ & * _ ~ ` | \\ ; : , ' \"")
    return texts


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def cache_key(seed: int) -> str:
    """Hash of everything that decides the built files."""
    corpus_hash = hashlib.sha256("\n\x00".join(training_corpus()).encode("utf-8")).hexdigest()
    payload = {
        "spec": TINY_SPEC,
        "seed": seed,
        "corpus": corpus_hash,
        "transformers_major": _transformers_major(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def tiny_model_dir(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Where `ensure_tiny_model` keeps the model for this seed (whether or not it is built yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "models" / f"tiny-{cache_key(seed)}"


def train_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer in memory (under a second; no files, no network).

    Encoding adds `<s>` in front of every text by default, as Llama tokenizers do; no chat template.
    Byte-level BPE covers every byte, so `<unk>` exists for completeness but is never produced.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_SPEC["tokenizer_vocab_size"],
        min_frequency=TINY_SPEC["tokenizer_min_frequency"],
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=TINY_SPEC["max_position_embeddings"],
        padding_side="left",  # decoder-only batches pad on the left
        clean_up_tokenization_spaces=False,
    )


def _build(out: Path, seed: int) -> None:
    """Write the tokenizer and a seeded random model into the empty directory `out`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    spec = TINY_SPEC
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"],
        max_position_embeddings=spec["max_position_embeddings"],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
        architectures=[spec["architecture"]],
        dtype="float32",
    )
    # Seed a private copy of the RNG so building does not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD], do_sample=False
    )
    save_kwargs: dict[str, Any] = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:  # transformers 4.x
        save_kwargs["safe_serialization"] = True
    with _quiet_progress_bars():
        model.save_pretrained(out, **save_kwargs)
    tokenizer.save_pretrained(out)
    _add_legacy_dtype_key(out / "config.json")
    marker = {"spec": spec, "seed": seed, "key": cache_key(seed), "vocab_size": len(tokenizer)}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' "Writing model shards" bar for a sub-second write; restore the setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _add_legacy_dtype_key(config_path: Path) -> None:
    """transformers 5 writes `dtype`; older readers (and some engines) look for `torch_dtype`."""
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data.setdefault("torch_dtype", data.get("dtype", "float32"))
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _is_complete(path: Path) -> bool:
    return (path / MARKER_FILE).is_file()


def _publish(tmp: Path, target: Path) -> None:
    """Move the finished build into place; a concurrent builder that got there first wins."""
    for _ in range(2):
        try:
            os.rename(tmp, target)  # atomic; fails if target exists and is not empty
            return
        except OSError:
            if _is_complete(target):
                return  # another process published the same files first
            if not target.exists():
                raise
            # A leftover without the marker (interrupted copy, manual edit): move it aside, retry.
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
            try:
                os.rename(target, trash / "old")
            except OSError:
                if not _is_complete(target):
                    raise
            shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not publish the tiny model at {target}")


def ensure_tiny_model(cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Return the directory of the built-in tiny model, building it on first use.

    Load it with `AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)`.
    The build happens in a temporary sibling directory and is renamed into place, so a reader never
    sees half-written files and concurrent builders are harmless.
    """
    target = tiny_model_dir(cache_dir, seed)
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        _build(tmp, seed)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared (containers, other users)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
