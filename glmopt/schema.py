"""Base class for every recipe section: unknown keys are errors, values are immutable once loaded."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
