"""Argument checks shared by the library: one clear error that names the argument."""

from __future__ import annotations

from numbers import Integral


def check_positive_int(**values) -> None:
    """Raise ``ValueError`` naming the first of ``values`` that is not a positive int (``True`` is not a count)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
