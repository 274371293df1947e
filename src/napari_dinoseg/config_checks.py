"""What every config shares: the checks of its field values and its JSON round trip.

Below :mod:`napari_dinoseg.config` and its family modules (:mod:`~napari_dinoseg.config_train`,
:mod:`~napari_dinoseg.config_crf`), which validate their fields with these helpers in
``__post_init__``; imports nothing of the package.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, allowed))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(value: Any) -> Optional[int]:
    """``value`` as an ``int`` if it is an integer (a numpy integer too, not a bool), else ``None``."""
    import numbers

    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_":
        return int(value)
    return None


def _is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_or_default(value: Any, kind: type, name: str = "config"):
    """``kind()`` for ``None``, ``value`` for an instance of ``kind``; ``TypeError`` naming the
    expected type otherwise (a dict too: build the config with ``kind(**d)`` or ``kind.from_dict(d)``)."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        hint = f"; build one with {kind.__name__}(**d) or {kind.__name__}.from_dict(d)" if isinstance(value, dict) else ""
        raise TypeError(f"{name} must be a {kind.__name__} (or None for the defaults), got {type(value).__name__}{hint}")
    return value


class _JSONConfig:
    """Mixin: round trip through plain JSON-compatible dicts, rejecting unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if not isinstance(data, dict):
            raise TypeError(f"a {cls.__name__} is read from a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {sorted(unknown)}; known fields: {sorted(known)}"
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, _JSONConfig):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _pair(name: str, value: Any) -> tuple[float, float]:
    """``value`` as two finite floats, or a ``ValueError`` naming ``name``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (low, high), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return lo, hi
