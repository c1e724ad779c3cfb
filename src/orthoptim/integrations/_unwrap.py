"""What the trainer callbacks share."""

from __future__ import annotations

from typing import Any

from orthoptim.optim import ChainOptimizer


def chain_optimizer(optimizer: Any) -> ChainOptimizer:
    """The ``ChainOptimizer`` inside the wrappers trainers put around it (Accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``: each holds ``.optimizer``);
    ``TypeError`` where there is none."""
    inner = optimizer
    while not isinstance(inner, ChainOptimizer):
        if not hasattr(inner, "optimizer") or inner.optimizer is inner:
            raise TypeError(
                "telemetry needs an orthoptim optimizer, the trainer has "
                f"{type(optimizer).__name__}"
            )
        inner = inner.optimizer
    return inner
