"""Telemetry: what a step did, per route and per parameter, measured every N steps.

``ChainOptimizer(telemetry_every=N)`` (``build(..., telemetry_every=N)``) measures every N-th
call of ``step()`` (the N-th, 2N-th, ...); ``opt.telemetry()`` returns the figures of the last
measured step. Off (``None`` or 0, the default) the step runs exactly as without this module:
no snapshot, no ``Ctx.record``, not one op more.

How a measured step is taken. It runs on whatever path the step takes anyway (fused AdamW,
multi-tensor, route-wide, one tensor at a time), and the figures come from both ends of it:

- before the update, a copy of every parameter that has a gradient (one copy of those
  parameters alive during a measured step, released after it);
- after it, ``d = theta_before - theta_after`` (the applied update, decoupled decay included)
  and the gradient (unscaled, where a ``GradScaler`` scaled it);
- inside it, each transform that has a figure of its own reports it through ``Ctx.record``:
  Orthogonalize the health of its Newton-Schulz output (``functional.polar.polar_health``).

Figures of a parameter (float32, computed on the device during the step, read on the host only
by ``telemetry()``):

- ``update_rms``: ``||d|| / sqrt(numel)``;
- ``update_ratio``: ``||d|| / ||theta_before||``;
- ``grad_norm``: ``||g||``;
- ``effective_lr``: the group's lr (scheduled lr times ``lr_scale``) times the chain's trailing
  shape scale for this parameter (``Chain.folded``: Muon's ``sqrt(max(1, m/n))``, 1 for AdamW);
- orthogonalized routes only: ``polar_min`` and ``polar_max``, the band of the Newton-Schulz
  output's singular values seen by an 8-column Gaussian sketch (inside the true band), and
  ``polar_deviation``, the sketch's estimate of ``||O O^T - I||_F / sqrt(m)``
  (``polar_health``); over the matrices of a stacked parameter, the least minimum, the greatest
  maximum and the greatest deviation.

Figures of a route: ``update_rms`` and ``update_ratio`` over the route's parameters taken as one
vector, ``grad_norm`` likewise, ``lr`` (the first group's lr times ``lr_scale``), and the
least ``polar_min``, greatest ``polar_max`` and greatest ``polar_deviation`` of its parameters.

The measured step's counter is the number of ``step()`` calls (skipped steps included); not in
``state_dict``, it is set again on ``load_state_dict`` from the loaded step counters and skipped
steps, so a resumed run measures the same steps. Telemetry never changes the update: a
measured step's parameters and state are bit-identical to an unmeasured one's
(``tests/optim/test_telemetry.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from orthoptim.groups import with_grads
from orthoptim.recipes.plan import Plan, group_layout, group_lr, live_chain
from orthoptim.transforms.base import Ctx

PARAM_FIGURES: tuple[str, ...] = ("update_rms", "update_ratio", "grad_norm", "effective_lr")
POLAR_FIGURES: tuple[str, ...] = ("polar_min", "polar_max", "polar_deviation")
ROUTE_FIGURES: tuple[str, ...] = ("update_rms", "update_ratio", "grad_norm", "lr")


def check_every(every: int | None) -> int:
    """``telemetry_every`` as an int (0: off); ``ValueError`` unless ``None`` or an int >= 0."""
    if every is None:
        return 0
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(
            f"telemetry_every must be None, 0 (off) or a positive int (measure every N steps), "
            f"got {every!r}"
        )
    return every


@dataclass
class _Entry:
    label: str
    route: str
    param: Tensor
    before: Tensor
    effective_lr: float


@dataclass
class Probe:
    """One measured step in progress: the parameters before it, and what transforms record."""

    entries: list[_Entry]
    route_lr: dict[str, float]
    recorded: dict[int, list[Tensor]] = field(default_factory=dict)

    def record(self, param: Tensor, figure: str, value: Tensor) -> None:
        """``Ctx.record`` of ``param`` (``eager.Recorder``)."""
        if figure != "polar_health":
            raise ValueError(f"unknown telemetry figure {figure!r} (known: 'polar_health')")
        self.recorded.setdefault(id(param), []).append(value)


@dataclass
class Telemetry:
    """The telemetry of one ``ChainOptimizer``: the step counter, and the last measured step's
    figures, on the device until ``read``."""

    every: int
    calls: int = 0
    _step: int | None = None
    _values: Tensor | None = None
    _keys: list[tuple[str, str, str]] = field(default_factory=list)
    _floats: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _host: dict[str, Any] | None = None

    def begin(
        self,
        param_groups: Sequence[Mapping[str, Any]],
        plan: Plan,
        positions: Mapping[int, tuple[int, int]],
    ) -> Probe | None:
        """Count a ``step()`` call; on a measured one, snapshot the parameters with gradients
        and return the probe for ``finish``, else ``None``."""
        self.calls += 1
        if self.calls % self.every != 0:
            return None
        entries: list[_Entry] = []
        route_lr: dict[str, float] = {}
        for group in param_groups:
            route = str(group["route"])
            chain = live_chain(plan.route_named(route).chain, group)
            lr, layout = group_lr(group), group_layout(group)
            route_lr.setdefault(route, float(lr))
            for name, p in with_grads(group):
                label = name or f"{route}[{positions[id(p)][0]}]"
                c = Ctx(
                    0, lr, float(group["weight_decay"]), p, cast(Tensor, p.grad), name, None, layout
                )
                scale = chain.folded(c)[0]
                entries.append(_Entry(label, route, p, p.detach().clone(), float(lr) * scale))
        return Probe(entries, route_lr)

    def finish(self, probe: Probe) -> None:
        """The figures of the step just taken, kept on the device (no host read)."""
        scalars: list[Tensor] = []
        keys: list[tuple[str, str, str]] = []
        floats: dict[tuple[str, str, str], float] = {}
        sums: dict[str, list[Tensor]] = {}
        counts: dict[str, int] = {}
        polar: dict[str, list[Tensor]] = {}
        device = probe.entries[0].param.device if probe.entries else None
        for e in probe.entries:
            wide = torch.promote_types(e.param.dtype, torch.float32)
            before_sq = torch.linalg.vector_norm(e.before, dtype=wide).float().square()
            d_sq = torch.linalg.vector_norm(e.before.sub_(e.param), dtype=wide).float().square()
            grad = cast(Tensor, e.param.grad)
            g_sq = torch.linalg.vector_norm(grad, dtype=wide).float().square()
            n = e.param.numel()
            tiny = torch.finfo(torch.float32).tiny
            figures = {
                "update_rms": (d_sq / max(n, 1)).sqrt(),
                "update_ratio": (d_sq / before_sq.clamp_min(tiny)).sqrt(),
                "grad_norm": g_sq.sqrt(),
            }
            health = probe.recorded.get(id(e.param))
            if health:
                h = torch.stack([x.to(device) for x in health])
                figures["polar_min"] = h[:, 0].min()
                figures["polar_max"] = h[:, 1].max()
                figures["polar_deviation"] = h[:, 2].max()
                polar.setdefault(e.route, []).append(h)
            for figure, value in figures.items():
                keys.append(("params", e.label, figure))
                scalars.append(value.to(device))
            floats[("params", e.label, "effective_lr")] = e.effective_lr
            acc = sums.setdefault(e.route, [torch.zeros((), device=device)] * 3)
            sums[e.route] = [
                acc[0] + d_sq.to(device),
                acc[1] + before_sq.to(device),
                acc[2] + g_sq.to(device),
            ]
            counts[e.route] = counts.get(e.route, 0) + n
        for route, (d_sq, before_sq, g_sq) in sums.items():
            figures = {
                "update_rms": (d_sq / max(counts[route], 1)).sqrt(),
                "update_ratio": (
                    d_sq / before_sq.clamp_min(torch.finfo(torch.float32).tiny)
                ).sqrt(),
                "grad_norm": g_sq.sqrt(),
            }
            if route in polar:
                h = torch.cat(polar[route])
                figures.update(
                    polar_min=h[:, 0].min(), polar_max=h[:, 1].max(), polar_deviation=h[:, 2].max()
                )
            for figure, value in figures.items():
                keys.append(("routes", route, figure))
                scalars.append(value)
            floats[("routes", route, "lr")] = probe.route_lr[route]
        self._step = self.calls
        self._values = torch.stack(scalars) if scalars else None
        self._keys, self._floats, self._host = keys, floats, None

    def read(self) -> dict[str, Any]:
        """The last measured step's figures on the host (``ChainOptimizer.telemetry``)."""
        if self._host is None:
            values = [] if self._values is None else self._values.tolist()  # the one host read
            out: dict[str, Any] = {"step": self._step, "routes": {}, "params": {}}
            for (section, key, figure), value in zip(self._keys, values, strict=True):
                out[section].setdefault(key, {})[figure] = value
            for (section, key, figure), value in self._floats.items():
                out[section].setdefault(key, {})[figure] = value
            self._host = out
        return self._host

    def restart_at(self, calls: int) -> None:
        """Continue counting ``step()`` calls from ``calls`` (a loaded checkpoint's)."""
        self.calls = calls


def flat(
    report: Mapping[str, Any], prefix: str = "telemetry", per_parameter: bool = True
) -> dict[str, float]:
    """``telemetry()``'s mapping as logger tags: ``{prefix}/{route}/{figure}`` for each route
    and, with ``per_parameter``, ``{prefix}/param/{name}/{figure}`` for each parameter; nothing
    before the first measured step. Non-finite values are kept (a logger shows them)."""
    out: dict[str, float] = {}
    for route, figures in report.get("routes", {}).items():
        for figure, value in figures.items():
            out[f"{prefix}/{route}/{figure}"] = float(value)
    if per_parameter:
        for name, figures in report.get("params", {}).items():
            for figure, value in figures.items():
                out[f"{prefix}/param/{name}/{figure}"] = float(value)
    return out
