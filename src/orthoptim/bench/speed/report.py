"""Reading, summarising and printing ``orthoptim speed`` records: ratios to the fastest peer,
to the FLOP floor and to orthoptim's ``muon``, and the table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orthoptim.bench.speed.measure import memory_floor_bytes
from orthoptim.bench.speed.result import RECORD_KEYS, SPEED_SCHEMA, Result


def read(path: Path) -> list[dict[str, Any]]:
    """The speed records of ``path`` (a folder or its ``records.jsonl``); ``ValueError`` naming
    the first line that is not a speed record with every key."""
    if path.is_dir():
        path = path / "records.jsonl"
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = [k for k in RECORD_KEYS if k not in record]
        if record.get("kind") != "speed" or record.get("schema") != SPEED_SCHEMA or missing:
            raise ValueError(f"{path}:{number}: not a speed record (missing {missing})")
        out.append(record)
    if not out:
        raise ValueError(f"{path} holds no speed records")
    return out


def summarize(
    results: Sequence[Result], bf16_rate: float, stream_rate: float = math.nan
) -> dict[str, Any]:
    """Ratios: to the fastest peer of the same family, to the FLOP floor (FLOPs at the bf16
    rate), to the memory floor (``measure.memory_floor_bytes`` at the streaming rate), to
    orthoptim's muon."""
    ok = [r for r in results if r.error is None and r.times_s]
    fastest = {}
    for family in ("muon", "adamw"):
        peers = [r.median_ms for r in ok if r.entrant.family == family and not _ours(r)]
        fastest[family] = min(peers) if peers else math.nan
    muon = next((r for r in ok if r.entrant.name == "orthoptim:muon"), None)
    floor_ms = muon.flops / bf16_rate * 1e3 if muon is not None and muon.flops else math.nan
    rows = {}
    for r in results:
        ms = r.median_ms
        family = r.entrant.family
        # Rate and muon step from the entrant's own rounds where the run measured them there.
        rate = r.rate_alongside or bf16_rate
        muon_ms = r.muon_ms_alongside or (_amortised_ms(muon) if muon is not None else math.nan)
        own_floor_ms = r.flops / rate * 1e3 if r.flops else math.nan
        memory_floor_ms = memory_floor_bytes(r.param_bytes, r.state_bytes) / stream_rate * 1e3
        rows[r.entrant.name] = {
            "ratio_fastest_peer": ms / fastest[family] if family in fastest else math.nan,
            "ratio_floor": _amortised_ms(r) / own_floor_ms if r.flops else math.nan,
            "ratio_muon": _amortised_ms(r) / muon_ms,
            "own_floor_ms": own_floor_ms,
            "memory_floor_ms": memory_floor_ms,
            # The check reads only the gradients: a step's floor does not bound it.
            "ratio_memory_floor": _amortised_ms(r) / memory_floor_ms
            if r.param_bytes and family != "check"
            else math.nan,
            "rate_alongside": rate,
            "muon_ms_alongside": muon_ms,
            "state_bytes_per_param": r.state_bytes / r.params if r.params else math.nan,
        }
    return {"rows": rows, "fastest": fastest, "floor_ms": floor_ms}


def _amortised_ms(r: Result) -> float:
    """The mean over a whole refresh period for an optimizer with periodic work, the median
    (as for every ratio to a peer) for the rest."""
    return r.mean_ms if r.entrant.period > 1 else r.median_ms


def _ours(r: Result) -> bool:
    return r.entrant.library == "orthoptim"


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def render(
    results: Sequence[Result],
    summary: dict[str, Any],
    rates: dict[str, float],
    run_info: dict[str, Any],
) -> str:
    """The printed table, one line per entrant."""
    lines = [
        f"step speed: {len(run_info['shapes']) * run_info['layers']} matrices "
        f"({run_info['matrix_params'] / 1e6:.1f}M params; "
        f"AdamW set {run_info['full_params'] / 1e6:.1f}M), {run_info['threads']} threads, "
        f"median of {run_info['steps']} after {run_info['warmup']} warm-up (mean, FLOPs, x floor "
        "and x muon over a whole refresh period where an optimizer has one)",
        f"matmul rate: bf16 {rates['bf16_flops'] / 1e9:.0f} GFLOP/s (median over the rounds "
        f"of {run_info['rate_repeats']} {run_info['rate_size']}-square products timed among "
        "the steps; best "
        f"{rates['bf16_best'] / 1e9:.0f} before or after the rounds), fp32 "
        f"{rates['fp32_flops'] / 1e9:.0f} GFLOP/s; Muon FLOP floor "
        f"{_fmt(summary['floor_ms'], '.0f')} ms (NS matmul FLOPs / median bf16 rate)",
        f"streaming rate: {_fmt(rates.get('stream_bytes', math.nan) / 1e9, '.1f')} GB/s (best of "
        "a copy and torch's fused AdamW kernel); x mem: step over its memory floor (grads read, "
        "params read and written, state read once, at that rate)",
        "",
        f"{'optimizer':<26}{'step ms':>9}{'mean ms':>9}{'x fastest peer':>16}{'x floor':>9}"
        f"{'x mem':>8}{'x muon':>8}"
        f"{'GFLOP':>8}{'state B/param':>15}{'transient MB':>14}",
    ]
    for r in results:
        row = summary["rows"][r.entrant.name]
        if r.error is not None:
            lines.append(f"{r.entrant.name:<26}  error: {r.error}")
            continue
        transient = None if r.transient_bytes is None else r.transient_bytes / 2**20
        lines.append(
            f"{r.entrant.name:<26}{_fmt(r.median_ms, '.1f'):>9}{_fmt(r.mean_ms, '.1f'):>9}"
            f"{_fmt(row['ratio_fastest_peer'], '.3f'):>16}{_fmt(row['ratio_floor'], '.3f'):>9}"
            f"{_fmt(row['ratio_memory_floor'], '.1f'):>8}{_fmt(row['ratio_muon'], '.2f'):>8}"
            f"{_fmt(r.flops / 1e9, '.1f'):>8}"
            f"{_fmt(row['state_bytes_per_param'], '.2f'):>15}{_fmt(transient, '.1f'):>14}"
        )
    lines += _notes(results)
    return "\n".join(lines)


def _notes(results: Sequence[Result]) -> list[str]:
    """The lines under the table: where the other matrix optimizers were timed, and what the
    non-finite check costs."""
    out: list[str] = []
    later = next((r for r in results if r.entrant.family == "matrix" and r.rate_alongside), None)
    if later is not None and later.rate_alongside:
        again = (
            ""
            if later.muon_ms_alongside is None
            else (f"orthoptim:muon again ({later.muon_ms_alongside:.1f} ms) and ")
        )
        out.append(
            "the other orthoptim matrix optimizers ran their own rounds after the Muon and AdamW "
            f"entrants, beside {again}the probe ({later.rate_alongside / 1e9:.0f} GFLOP/s); "
            "their x floor and x muon use those"
        )
    check = next((r for r in results if r.entrant.family == "check" and r.times_s), None)
    shares = [
        f"{check.median_ms / r.median_ms:.1%} of {r.entrant.name}"
        for r in results
        if check is not None
        and r.times_s
        and r.entrant.name in ("orthoptim:muon", "orthoptim:adamw")
    ]
    if check is not None:
        out.append(
            f"non-finite gradient check (in every orthoptim step above): {check.median_ms:.1f} ms"
            + (f" = {', '.join(shares)}" if shares else "")
        )
    return out
