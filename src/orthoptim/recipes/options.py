"""Where a recipe's keyword defaults come from, so that each is written once.

``default(source, name)`` reads a default from where it is written: a transform's dataclass field
(``default(Orthogonalize, "eps")``) or another recipe's keyword (``default(muon, "momentum")``).
``extends(base, ...)`` gives a variant recipe ``base``'s keyword options (their names, types,
order and defaults, some replaced or dropped) plus its own, so a variant neither re-lists nor
forwards them by hand. Both keep ``inspect.signature(recipe)`` complete, which is what
``Spec.options()`` and the CLI show users.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def default(source: type | Callable[..., Any], name: str) -> Any:
    """The default of field ``name`` of the dataclass ``source`` (a transform), or of keyword
    ``name`` of the function ``source`` (a recipe); ``TypeError`` if it has none."""
    if dataclasses.is_dataclass(source):
        for f in dataclasses.fields(source):
            if f.name == name and f.default is not dataclasses.MISSING:
                return f.default
    else:
        parameter = inspect.signature(source).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise TypeError(f"{getattr(source, '__name__', source)!r} has no default for {name!r}")


def extends(
    base: Callable[..., Any],
    *,
    drop: tuple[str, ...] = (),
    own_after: str | None = None,
    **defaults: Any,
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator: the recipe takes ``base``'s keyword options, less ``drop`` and with
    ``defaults`` in place of ``base``'s, plus its own keyword-only parameters (after the option
    ``own_after``, else last).

    The decorated function declares only its own options and ``**options``; a call binds to the
    whole signature and fills in every default, so the function receives ``base``'s options in
    ``options``, ready for ``base(**options)``.
    """

    def decorate(fn: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
        inherited = [
            p.replace(default=defaults[p.name]) if p.name in defaults else p
            for p in inspect.signature(base).parameters.values()
            if p.name not in drop
        ]
        unknown = set(defaults) - {p.name for p in inherited}
        if unknown:
            raise TypeError(f"{fn.__name__}: {sorted(unknown)} are not options of {base.__name__}")
        names = [p.name for p in inherited]
        at = len(inherited) if own_after is None else names.index(own_after) + 1
        whole = signature.replace(parameters=[*inherited[:at], *own, *inherited[at:]])

        @functools.wraps(fn)
        def recipe(**options: Any) -> R:
            try:
                bound = whole.bind(**options)
            except TypeError as error:  # as Python words it: "muon_polar() got an unexpected ..."
                raise TypeError(f"{fn.__name__}() {error}") from None
            bound.apply_defaults()
            return fn(**bound.arguments)

        recipe.__signature__ = whole  # type: ignore[attr-defined]  # what inspect.signature reads
        return recipe

    return decorate
