"""What ``orthoptim speed`` measures and writes: an entrant, its result, and the record (one line
of ``records.jsonl``) that the benchmark writes and the report reads."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from orthoptim.bench.shared.environment import plain

SPEED_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Entrant:
    """One optimizer in the benchmark.

    Args:
        name: ``library:optimizer``.
        library: the distribution it comes from.
        family: ``"muon"`` or ``"adamw"`` (compared with peers of that family), or ``"matrix"``
            (another orthoptim matrix optimizer, compared with orthoptim's ``muon``).
        full_set: step the AdamW set (matrices + ``ADAMW_EXTRA``) instead of the matrices.
        make: builds it on the given parameters.
    """

    name: str
    library: str
    family: str
    full_set: bool
    make: Callable[[list[torch.Tensor]], Any]
    period: int = 1


@dataclass(slots=True)
class Result:
    """What the benchmark measured for one entrant."""

    entrant: Entrant
    params: int
    times_s: list[float] = field(default_factory=list)
    flops: int = 0
    state_bytes: int = 0
    param_bytes: int = 0
    transient_bytes: int | None = None
    error: str | None = None
    # Measured in the same rounds as this entrant: the probe's bf16 rate (its FLOP floor's) and
    # orthoptim:muon's median step (its "x muon"); None where the run had neither.
    rate_alongside: float | None = None
    muon_ms_alongside: float | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_s) * 1e3 if self.times_s else math.nan

    @property
    def mean_ms(self) -> float:
        """The mean over the timed steps: over a whole refresh period for an optimizer with
        periodic work (SOAP's eigenbasis, Shampoo's roots), its amortised cost."""
        return statistics.fmean(self.times_s) * 1e3 if self.times_s else math.nan


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeedRecord:
    """One line of a speed run's ``records.jsonl``: an entrant's measurements, its ratios (the
    report's ``summarize``), the run's protocol (``run``) and the environment. The keys after
    ``finished_at`` came after the first curated records: the reader does not require them."""

    schema: int = SPEED_SCHEMA
    kind: str = "speed"
    run: dict[str, Any]
    name: str
    library: str
    family: str
    params: int
    step_ms_median: float
    step_ms: list[float]
    flops: int
    state_bytes: int
    transient_peak_bytes: int | None
    error: str | None
    ratio_fastest_peer: float
    ratio_floor: float
    ratio_muon: float
    state_bytes_per_param: float
    env: dict[str, Any]
    finished_at: str
    step_ms_mean: float
    period: int
    own_floor_ms: float
    rate_alongside: float | None
    muon_ms_alongside: float | None
    memory_floor_ms: float
    ratio_memory_floor: float

    @classmethod
    def of(
        cls,
        result: Result,
        row: Mapping[str, Any],
        run: dict[str, Any],
        env: dict[str, Any],
    ) -> SpeedRecord:
        """The record of ``result``, with its ``row`` of ratios from the report's summary."""
        return cls(
            run=run,
            name=result.entrant.name,
            library=result.entrant.library,
            family=result.entrant.family,
            params=result.params,
            step_ms_median=result.median_ms,
            step_ms_mean=result.mean_ms,
            period=result.entrant.period,
            step_ms=[t * 1e3 for t in result.times_s],
            flops=result.flops,
            state_bytes=result.state_bytes,
            transient_peak_bytes=result.transient_bytes,
            error=result.error,
            **row,
            env=env,
            finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )

    def json_line(self) -> str:
        """The record as one line of strict JSON (non-finite floats as ``null``, keys sorted)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(plain(data), allow_nan=False, sort_keys=True) + "\n"


_KEYS = tuple(f.name for f in fields(SpeedRecord))
RECORD_KEYS: tuple[str, ...] = _KEYS[: _KEYS.index("finished_at") + 1]
"""The keys every speed record holds (the first curated records lack the later ones)."""
