"""Field types of job params, read the way JSON Schema reads JSON: params models are strict (no
`true` for a number, no `"5"` for an integer), except that 20.0 is the integer 20, as JSON
Schema's `integer` allows."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral)]


def bounded_integer(ge: int, le: int | None = None) -> Any:
    """An Integer within [ge, le], the bounds where JSON Schema shows them (also in a union)."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]
