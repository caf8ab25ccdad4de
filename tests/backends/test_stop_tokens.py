"""Every engine stops on one set of token ids: the model's generation-config eos ids plus the tokenizer's.

The end-to-end checks use a copy of the built-in tiny model whose generation config lists a second
end-of-sequence id: a token the random model really emits a few steps into some prompt's greedy
output, found by running the model first, so stopping on it is observable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from llem.backends.pytorch.backend import PyTorchBackend
from llem.backends.stop_tokens import merge_stop_ids, stop_token_ids
from llem.config import ExperimentConfig
from llem.models.tiny import EOS, ensure_tiny_model
from llem.prompts.load import Prompt, load_prompts
from tests.backends._vllm import VLLM_CPU_BACKEND, needs_vllm

PROMPTS, MAX_OUT = 8, 12


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _copy_tiny(tmp: Path) -> Path:
    target = tmp / "tiny"
    shutil.copytree(ensure_tiny_model(), target)
    return target


def _set_json(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def test_merge_rule_keeps_config_order_and_adds_the_tokenizer_eos_once() -> None:
    assert merge_stop_ids(7, 2) == [7, 2]
    assert merge_stop_ids([9, 2, 5], 2) == [9, 2, 5]
    assert merge_stop_ids([4, 4], None) == [4]
    assert merge_stop_ids(None, 2) == [2]
    assert merge_stop_ids(None, None) == []


def test_stop_ids_read_from_generation_config_int_list_or_model_config(tmp_path: Path) -> None:
    model = _copy_tiny(tmp_path)
    tokenizer = _tokenizer(model)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    assert tokenizer.eos_token_id == eos

    _set_json(model / "generation_config.json", eos_token_id=11)
    assert stop_token_ids(str(model), None, False, tokenizer) == [11, eos]

    _set_json(model / "generation_config.json", eos_token_id=[13, eos, 17])
    assert stop_token_ids(str(model), None, False, tokenizer) == [13, eos, 17]

    (model / "generation_config.json").unlink()  # then transformers and vLLM derive it from config.json
    _set_json(model / "config.json", eos_token_id=19)
    assert stop_token_ids(str(model), None, False, tokenizer) == [19, eos]


def _experiment(model: Path, backend: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "model": {"name": str(model)},
            "num_input_prompts": PROMPTS,
            "max_input_tokens": 32,
            "max_output_tokens": MAX_OUT,
            "force_output_length": False,
            "backend": backend,
        }
    )


def _greedy_ids(model_dir: Path, prompts: list[Prompt]) -> list[list[int]]:
    """Each prompt's first MAX_OUT greedy tokens, with stopping switched off."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt.token_ids])
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_OUT, min_new_tokens=MAX_OUT,
                do_sample=False, eos_token_id=None, pad_token_id=0, temperature=None, top_p=None, top_k=None,
            )
            outputs.append(out[0, ids.shape[1] :].tolist())
    return outputs


def _early_token(outputs: list[list[int]], special: set[int]) -> int:
    """A non-special token that first appears a few steps into some output: the earliest such, lowest id on ties."""
    first_seen: dict[int, int] = {}
    for row in outputs:
        for position, token in enumerate(row):
            if token not in special and 1 <= position <= MAX_OUT - 3 and token not in row[:position]:
                first_seen[token] = min(first_seen.get(token, position), position)
    assert first_seen, "the tiny model emitted no usable token"
    return min(first_seen, key=lambda token: (first_seen[token], token))


def _stop_lengths(outputs: list[list[int]], stops: set[int]) -> list[int]:
    return [next((i + 1 for i, t in enumerate(row) if t in stops), MAX_OUT) for row in outputs]


@pytest.fixture(scope="module")
def two_stop_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny model with generation_config eos_token_id = [eos, <an early greedy token>], and what to expect."""
    model = _copy_tiny(tmp_path_factory.mktemp("two-stop"))
    tokenizer = _tokenizer(model)
    experiment = _experiment(model, {"name": "pytorch", "batch_size": 1})
    prompts = load_prompts(experiment.dataset, tokenizer, n=PROMPTS, max_input_tokens=32, seed=experiment.random_seed)
    outputs = _greedy_ids(model, prompts)
    eos = tokenizer.eos_token_id
    second = _early_token(outputs, set(tokenizer.all_special_ids))
    _set_json(model / "generation_config.json", eos_token_id=[eos, second])
    return {
        "model": model,
        "prompts": prompts,
        "stop_ids": [eos, second],
        "second": second,
        "expected": _stop_lengths(outputs, {eos, second}),
        "without_second": _stop_lengths(outputs, {eos}),
    }


@pytest.mark.slow
def test_pytorch_stops_on_every_id_of_the_generation_config(two_stop_model: dict[str, Any]) -> None:
    expected = two_stop_model["expected"]
    assert expected != two_stop_model["without_second"], "the second stop id must end some prompt early"
    assert any(1 < n < MAX_OUT for n in expected)

    backend = PyTorchBackend()
    experiment = _experiment(two_stop_model["model"], {"name": "pytorch", "batch_size": 1})
    try:
        info = backend.load(experiment)
        out = backend.generate(two_stop_model["prompts"], experiment)
        forced_experiment = experiment.model_copy(update={"force_output_length": True})
        forced = backend.generate(two_stop_model["prompts"], forced_experiment)
    finally:
        backend.unload()
    assert info.settings["stop_token_ids"] == two_stop_model["stop_ids"]
    assert [s.output_tokens for s in out.sequences] == expected
    assert [s.output_tokens for s in forced.sequences] == [MAX_OUT] * PROMPTS  # forced length ignores stop ids


@pytest.mark.vllm
@needs_vllm
def test_vllm_adds_no_stop_ids_of_its_own_to_the_shared_set() -> None:
    from llem.backends.vllm.backend import EngineArgsError, check_stop_ids, engine_stop_ids

    assert engine_stop_ids([2, 9], {"eos_token_id": [2, 9]}, 2) == {2, 9}
    assert engine_stop_ids([2, 9], {"eos_token_id": 2}, 2) == {2, 9}
    assert engine_stop_ids([5, 2], {}, 2) == {5, 2}
    check_stop_ids([2, 9], {"eos_token_id": [9, 2]}, 2)
    with pytest.raises(EngineArgsError, match=r"also stop on token ids \[7\]"):
        check_stop_ids([2], {"eos_token_id": [2, 7]}, 2)


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_cpu_stops_where_pytorch_does(two_stop_model: dict[str, Any]) -> None:
    from llem.backends.vllm.backend import VLLMBackend, engine_stop_ids

    backend = VLLMBackend()
    experiment = _experiment(two_stop_model["model"], VLLM_CPU_BACKEND)
    try:
        info = backend.load(experiment)
        out = backend.generate(two_stop_model["prompts"], experiment)
        model_config = backend._engine.vllm_config.model_config
        effective = engine_stop_ids(
            info.settings["stop_token_ids"], model_config.try_get_generation_config(), backend.tokenizer.eos_token_id
        )
    finally:
        backend.unload()
    assert info.settings["stop_token_ids"] == two_stop_model["stop_ids"]
    assert effective == set(two_stop_model["stop_ids"])
    assert [s.output_tokens for s in out.sequences] == two_stop_model["expected"]
