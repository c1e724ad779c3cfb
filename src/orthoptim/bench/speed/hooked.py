"""Entrants that read layer statistics through module hooks (``needs_module``: MKOR, MKOR-H,
spd_momentum): the benchmark's matrices as the weights of bias-free ``nn.Linear`` layers, with one
fixed forward and backward before each timed step so that the hooks hold fresh statistics (what
the hooks compute, spd_momentum's covariances included, falls in that untimed pass)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from orthoptim import registry

BATCH = 64
"""Rows of the fixed batch each layer sees (the statistics are batch means: their cost does not
grow with the batch, the untimed forward and backward do)."""


class HookedLayers:
    """``registry.build(name, layers)`` on one ``nn.Linear`` per matrix (weight ``(out, in)``),
    every layer routed as hidden. ``prepare()`` (untimed, before each step) runs each layer on a
    fixed batch and backpropagates a fixed output gradient; ``step()`` is the optimizer's step.

    The layers need ``nn.Parameter`` weights: each tensor of ``params`` is replaced in that list
    by an ``nn.Parameter`` on the same storage, so the benchmark's gradients reach them.
    """

    def __init__(self, name: str, params: list[torch.Tensor]) -> None:
        gen = torch.Generator().manual_seed(1)
        self.layers = nn.ModuleList()
        self.inputs, self.out_grads = [], []
        for i, p in enumerate(params):
            rows, cols = p.shape
            layer = nn.Linear(cols, rows, bias=False)
            params[i] = layer.weight = nn.Parameter(p)
            self.layers.append(layer)
            self.inputs.append(torch.randn(BATCH, cols, generator=gen))
            self.out_grads.append(torch.randn(BATCH, rows, generator=gen) / BATCH)
        self.optimizer = registry.build(name, self.layers, overrides={"*": "hidden"})
        self.optimizers = [self.optimizer]

    def prepare(self) -> None:
        """One forward and backward of the fixed batch: the hooks' statistics for the next step
        (the gradients it leaves are replaced by the benchmark's)."""
        for layer, x, g in zip(self.layers, self.inputs, self.out_grads, strict=True):
            layer(x).backward(g)

    def step(self) -> None:
        self.optimizer.step()


def hooked(name: str) -> Callable[[list[torch.Tensor]], HookedLayers]:
    """The ``Entrant.make`` of registered optimizer ``name`` on hooked layers."""

    def make(params: list[torch.Tensor]) -> HookedLayers:
        return HookedLayers(name, params)

    return make
