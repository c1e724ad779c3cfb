"""The reference packages, pinned: a test that takes ``heavyball``, ``psgd_torch`` or
``pytorch_optimizer`` is skipped unless the ``[reference]`` extra is installed at exactly the
versions whose conventions and tolerances the tests were written against."""

from __future__ import annotations

import importlib.metadata
from types import ModuleType

import pytest


def pinned_package(name: str, dist: str, version: str) -> ModuleType:
    module = pytest.importorskip(name, reason=f"needs the [reference] extra ({dist}=={version})")
    found = importlib.metadata.version(dist)
    if found != version:
        pytest.skip(f"conventions and tolerances are pinned for {dist}=={version}, found {found}")
    return module


@pytest.fixture
def heavyball(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    hb = pinned_package("heavyball", "heavyball", "3.2.1")
    # Eager mode: torch.compile would cost ~17 s on the first step and changes nothing here.
    monkeypatch.setattr(hb.utils, "compile_mode", None)
    return hb


@pytest.fixture
def pytorch_optimizer() -> ModuleType:
    return pinned_package("pytorch_optimizer", "pytorch-optimizer", "4.1.0")


@pytest.fixture
def psgd_torch() -> ModuleType:
    return pinned_package("psgd_torch", "psgd_torch", "0.6.1")


@pytest.fixture
def singd() -> ModuleType:
    pinned_package("singd", "singd", "0.0.5")
    return pytest.importorskip("singd.optim.optimizer")
