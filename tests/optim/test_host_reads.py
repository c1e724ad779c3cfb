"""Every registered optimizer reads at most one device value per step: the shell's non-finite
check (``nonfinite="raise"``, the default). Nothing inside a recipe waits for the device.

Counted with ``bench.speed.ops`` (``aten._local_scalar_dense``, ``tolist``, ``numpy``, ``cpu``;
host step counters apart) on ``ops.Trainer(depth=2)`` from the first step (state creation) over
a whole refresh period and one step more: periodic work (Shampoo's roots, SOAP's bases,
low-rank projections, M-FAC's ring buffer wrapping, MKOR-H past its warmup) runs inside the
counted steps because its period is shortened to ``PERIOD``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from orthoptim import registry
from orthoptim._types import State
from orthoptim.bench.speed import ops
from orthoptim.optim import ChainOptimizer
from orthoptim.transforms import chain
from orthoptim.transforms.base import Ctx, TransformBase

PERIOD = 3
# Options that set how often periodic work runs, shortened so that it is counted.
PERIODIC = {
    "precondition_every": PERIOD,
    "update_every": PERIOD,
    "window": PERIOD,
    "switch_warmup": 2,
}
SHELL_READS = 1  # the non-finite check's one flag
EXCEPTIONS: dict[str, tuple[int, str]] = {}
"""Registry name -> (host reads per step, why), for a recipe that must read more; none does."""

NAMES = [n for n in registry.names() if not registry.get(n).needs_closure]


def make(
    name: str, foreach: bool, nonfinite: str = "raise"
) -> Callable[[nn.Module], list[torch.optim.Optimizer]]:
    spec = registry.get(name)
    options = {k: v for k, v in PERIODIC.items() if k in spec.options()}

    def build(model: nn.Module) -> list[torch.optim.Optimizer]:
        return [registry.build(name, model, foreach=foreach, nonfinite=nonfinite, **options)]

    return build


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
@pytest.mark.parametrize("name", NAMES)
def test_a_step_reads_at_most_the_non_finite_flag(name, foreach) -> None:
    """Both shell paths: per tensor (the CPU default) and multi-tensor (a GPU's)."""
    allowed, why = EXCEPTIONS.get(name, (SHELL_READS, ""))
    counted = ops.measure(name, make(name, foreach), depth=2, steps=PERIOD + 2, warmup=0)
    assert counted.host_reads <= allowed, (
        f"{name} reads the device {counted.host_reads} times in one step (allowed {allowed})"
        + (f": {why}" if why else "")
    )


@pytest.mark.parametrize("name", NAMES)
def test_an_unchecked_step_reads_nothing(name) -> None:
    """``nonfinite="off"`` (torch.optim's behaviour): no read at all, on a GPU's path."""
    allowed = EXCEPTIONS.get(name, (SHELL_READS, ""))[0] - SHELL_READS
    counted = ops.measure(name, make(name, True, "off"), depth=2, steps=PERIOD + 2, warmup=0)
    assert counted.host_reads <= allowed


def test_the_counter_sees_a_read_inside_a_recipe() -> None:
    """The count can fail: a transform that branches on a tensor is seen."""

    class Branchy(TransformBase):
        key: ClassVar[str] = "branchy"

        def apply(self, u: Tensor, s: State, c: Ctx) -> Tensor:
            return u.mul_(2.0) if bool(u.sum() > 0) else u

    def build(model: nn.Module) -> list[torch.optim.Optimizer]:
        return [ChainOptimizer(model.parameters(), chain(Branchy()), lr=0.1)]

    counted = ops.measure("branchy", build, depth=2, steps=2, warmup=0)
    assert counted.host_reads > SHELL_READS
