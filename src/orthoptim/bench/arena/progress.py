"""The race's progress bar (tqdm, optional): its total is estimated seconds of work."""

from __future__ import annotations

import sys
from typing import Any

from orthoptim.bench.shared.optional import require


def progress_bar(total: float) -> Any:
    """A tqdm bar counting estimated seconds of work, so its ETA holds across tasks whose steps
    cost 50x different amounts."""
    tqdm = require("tqdm", "the race's progress bar").tqdm
    interval = 0.1 if sys.stderr.isatty() else 5.0  # keep logs short when not on a terminal
    return tqdm(
        total=total,
        dynamic_ncols=True,
        smoothing=0.05,
        mininterval=interval,
        file=sys.stderr,
        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
    )


class Tick:
    """Advances the progress bar by a run's estimated cost, spread over its steps; ``finish``
    adds what a diverged or failed run did not take, so the ETA stays right."""

    def __init__(self, bar: Any, steps: int, cost: float) -> None:
        self.bar, self.steps, self.cost = bar, steps, cost
        self.per_step, self.done = cost / steps, 0.0

    def _advance(self, amount: float) -> None:
        amount = min(amount, self.cost - self.done, self.bar.total - self.bar.n)
        if amount > 0:
            self.bar.update(amount)
            self.done += amount

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is None:
            return
        self._advance(self.per_step)
        if step % 10 == 0 or step == self.steps:
            self.bar.set_postfix_str(f"step {step}/{self.steps} loss {loss:.4g}", refresh=False)

    def finish(self) -> None:
        if self.bar is not None:
            self._advance(self.cost - self.done)
