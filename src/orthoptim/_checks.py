"""Validation helpers: every message names the parameter, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def check_finite_nonnegative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def check_beta(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    allowed = tuple(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_optional_bool(name: str, value: Any) -> None:
    """An execution choice: ``True``, ``False``, or ``None`` for the per-device default."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be True, False or None (chosen per device), got {value!r}")


def check_betas(name: str, value: Any) -> None:
    """A pair ``(beta1, beta2)`` of EMA coefficients, each in [0, 1)."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{name} must be a tuple (beta1, beta2), got {value!r}")
    check_beta(f"{name}[0]", value[0])
    check_beta(f"{name}[1]", value[1])


def check_matrix(what: str, shape: tuple[int, ...], name: str, hint: str = "") -> None:
    """``ValueError`` unless ``shape`` is a matrix or conv kernel (ndim >= 2): ``what`` is the
    transform or option that needs one, ``name`` the parameter's name."""
    if len(shape) < 2:
        raise ValueError(
            f"{what} needs a matrix (ndim >= 2) but parameter {name or '<unnamed>'} has shape "
            f"{tuple(shape)}" + (f"; {hint}" if hint else "")
        )
