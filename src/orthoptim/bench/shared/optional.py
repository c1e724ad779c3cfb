"""Optional dependencies of the race, imported only inside the functions that need them.

``orthoptim.bench.models`` is imported by the CLI for ``route``; none of the bench modules may
import matplotlib, tqdm or scikit-learn at import time, so the library and its CLI keep working
without the ``[bench]`` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(RuntimeError):
    """An optional package of the ``[bench]`` extra is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtra`` saying how to install the ``[bench]`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(
            f"{purpose} needs {module.split('.')[0]!r} from the [bench] extra: "
            'pip install -e ".[bench]" (or pip install matplotlib tqdm scikit-learn)'
        ) from err


def version_of(distribution: str) -> str | None:
    """The installed version of ``distribution``, ``None`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
