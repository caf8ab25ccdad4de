"""The one base model every schema derives from: extra keys are errors, never ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A misspelt key must fail loudly, so every llem schema forbids extra keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
