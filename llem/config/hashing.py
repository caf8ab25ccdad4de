"""A stable identity for a resolved experiment config (same settings, same hash, any key order)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace variation, so equal configs serialise identically."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the config's canonical JSON (defaults filled in)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]
