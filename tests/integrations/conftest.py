"""Two gloo ranks shared by the Accelerate and Lightning tests: starting them and importing the
trainer libraries in each is most of those tests' time, so it is paid once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.distributed.harness import Ranks


@pytest.fixture(scope="session")
def ranks() -> Iterator[Ranks]:
    pair = Ranks()
    yield pair
    pair.close()
