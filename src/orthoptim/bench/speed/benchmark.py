"""``orthoptim speed``: the optimizer step alone, timed side by side against the peers.

Why a separate benchmark from the race: the race measures time to a loss target, where the
forward/backward pass dominates; this one isolates ``optimizer.step()`` on a fixed set of matrix
shapes (the GPT-like default of issue 7), so a slow step cannot hide behind the model.

Protocol, all in one process so every entrant sees the same machine state:

* Every entrant gets its own copy of the same parameters and the same fixed gradients.
* Steps are interleaved: each round steps every entrant once, so drift in machine load (other
  processes, frequency changes) is spread over all of them instead of biasing one. The Muon and
  AdamW entrants of every library (and the non-finite check) run their rounds first, then the
  other orthoptim matrix optimizers theirs, so slow steps (FISMO, SOAP) do not sit between two
  head-to-head steps.
* The first ``warmup`` rounds are discarded (lazy state creation, allocator warm-up); the
  reported time is the median of the remaining rounds.
* The machine's bf16 and fp32 matmul rates are measured in the same run. The FLOP floor of a Muon
  step is the matmul FLOPs of its Newton-Schulz iterations (counted by
  ``torch.utils.flop_counter`` on a real step) divided by the bf16 rate: the median rate of a
  probe (2048-square products, about as long as a Muon step) timed once in every head-to-head
  round, so that floor and step are medians over the same rounds. The best-of rate before and
  after the rounds is reported beside it.
* The memory floor of every entrant: the fewest bytes its step can move (gradients read,
  parameters read and written, its state read once) at the machine's streaming rate
  (``measure.stream_rate``: the faster of a copy and torch's fused AdamW kernel), measured in
  the same run; it bounds the steps that FLOPs do not (AdamW, M-FAC's gradient window).
* Memory: optimizer-state bytes per parameter (every tensor the optimizer keeps in ``state``),
  and the step's transient peak: the process's resident-set high-water mark during one step
  above its resident set before it (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).
  tracemalloc cannot see torch's CPU allocations and torch keeps no CPU allocator statistics.
  Before that step glibc is told to map large blocks separately and to release its cached free
  memory (``mallopt``, ``malloc_trim``), so memory the step reuses is faulted in again and
  counted (``None`` without glibc or ``/proc``).
"""

from __future__ import annotations

import datetime as dt
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from orthoptim.bench.shared.environment import environment
from orthoptim.bench.speed import closure as closure_section
from orthoptim.bench.speed.entrants import HEAD_FAMILIES, entrants, not_timed
from orthoptim.bench.speed.measure import (
    MatmulProbe,
    Shape,
    count_flops,
    fixed_params,
    matmul_rate,
    set_grads,
    state_bytes,
    stream_rate,
    transient_peak,
)
from orthoptim.bench.speed.report import render, summarize
from orthoptim.bench.speed.result import Entrant, Result, SpeedRecord

# One d=512 GPT block's hidden matrices (qkv, attention out, MLP up, MLP down), 6 blocks: 18.9M.
LAYER_SHAPES: tuple[Shape, ...] = ((1536, 512), (512, 512), (2048, 512), (512, 2048))
LAYERS = 6
# What the whole 23.1M-param model adds for AdamW: the 8192 x 512 token embedding (tied head).
ADAMW_EXTRA: tuple[Shape, ...] = ((8192, 512),)


class Stepper(Protocol):
    """Anything with a ``step()``: a torch optimizer or a wrapper of several."""

    def step(self) -> Any: ...


@runtime_checkable
class Prepared(Protocol):
    """A stepper with untimed work before each step (``hooked.HookedLayers``: the forward and
    backward its hooks read)."""

    def prepare(self) -> None: ...


def _prepare(stepper: Any) -> None:
    if isinstance(stepper, Prepared):
        stepper.prepare()


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """``"1536x512,512x512"`` -> ``((1536, 512), (512, 512))``; ``ValueError`` otherwise."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"shape {item!r} is not ROWSxCOLS (e.g. 1536x512)")
        shapes.append((int(parts[0]), int(parts[1])))
    return tuple(shapes)


# One entrant's result and what steps it: (stepper, parameters, gradients).
Entry = tuple[Result, tuple[Any, list[torch.Tensor], list[torch.Tensor]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeedConfig:
    """Options of ``orthoptim speed``.

    Args:
        shapes: the matrices of one layer; ``layers`` copies of them are stepped.
        layers: number of layers.
        adamw_extra: matrices AdamW entrants step in addition (the embedding).
        specs: orthoptim registry names to keep (``None``: all).
        peers: include installed peers.
        warmup: discarded rounds.
        steps: timed rounds (median reported).
        threads: torch CPU threads.
        out: output folder (``runs/speed-<timestamp>`` when ``None``).
        command: the command line, stored in the record.
        rate_size: side of the square matmul that measures the bf16 / fp32 rates.
        closure_widths: the layer widths of the closure section's MLP.
    """

    shapes: tuple[Shape, ...] = LAYER_SHAPES
    layers: int = LAYERS
    adamw_extra: tuple[Shape, ...] = ADAMW_EXTRA
    specs: tuple[str, ...] | None = None
    peers: bool = True
    warmup: int = 2
    steps: int = 5
    threads: int = 2
    out: Path | None = None
    command: str = ""
    rate_size: int = 2048
    closure_widths: tuple[int, ...] = closure_section.WIDTHS


def run(config: SpeedConfig, echo: Callable[[str], None] = print) -> tuple[list[Result], Path]:
    """Run the benchmark, print the table, write ``records.jsonl``; then, where any is selected,
    the closure section (``closure.run_section``: optimizers that need ``step(closure)``, timed
    as whole training steps beside AdamW's, in ``closure.jsonl``; its ratios are side by side
    within the section, after the rounds above). The results and folder.

    Run it once per process: the transient-memory measurement after the rounds makes glibc map
    every block of 64 KiB or more on its own for the rest of the process (``mallopt``), which
    slows every later run in it; ``benchmarks/speed_repeats.py`` starts a fresh process per run
    (what one process did to ten runs: ``benchmarks/records/2026-11-25_step-speed-4/README.md``).
    """
    if config.steps < 1 or config.warmup < 0 or config.layers < 1 or config.threads < 1:
        raise ValueError("steps, layers and threads must be >= 1 and warmup >= 0")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, echo)
    finally:
        torch.set_num_threads(old_threads)


def _run(config: SpeedConfig, echo: Callable[[str], None]) -> tuple[list[Result], Path]:
    matrices = tuple(config.shapes) * config.layers
    full = matrices + tuple(config.adamw_extra)
    entries = _build(entrants(config.specs, config.peers), matrices, full)
    env = environment()  # before the rounds: its load average is the machine's, not ours
    bf16 = matmul_rate(torch.bfloat16, config.rate_size)
    fp32 = matmul_rate(torch.float32, config.rate_size)
    stream = stream_rate()
    # Products worth a quarter second at the best rate: about one Muon step on the default set.
    repeats = max(1, round(0.25 * bf16 / (2 * config.rate_size**3)))
    head_rate = _time_entries(
        entries, config, MatmulProbe(torch.bfloat16, config.rate_size, repeats)
    )
    _measure_after(entries)
    bf16_after = matmul_rate(torch.bfloat16, config.rate_size)
    # The floor's rate is the probe's median over the timed rounds, as each step time is a
    # median over them; the best-of rates before and after the rounds are kept for reference
    # (the machine's best moment, which no median step is compared against).
    rates = {"bf16_flops": head_rate, "fp32_flops": fp32,
             "bf16_best": max(bf16, bf16_after), "bf16_first": bf16,
             "bf16_last": bf16_after, "stream_bytes": stream}  # fmt: skip
    results = [result for result, _ in entries]
    summary = summarize(results, rates["bf16_flops"], stream)
    out = config.out or Path("runs") / dt.datetime.now().strftime("speed-%Y-%m-%d_%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    run_info = _run_info(config, matrices, full, repeats, rates, summary["floor_ms"])
    with (out / "records.jsonl").open("a", encoding="utf-8") as f:
        for result in results:
            row = summary["rows"][result.entrant.name]
            f.write(SpeedRecord.of(result, row, run_info, env).json_line())
    echo(render(results, summary, rates, run_info))
    for name, why in run_info["not_timed"].items():
        echo(f"not timed: orthoptim:{name} ({why}; see the closure section)")
    chosen = closure_section.closure_entrants(config.specs)
    if chosen:
        adamw, rows = closure_section.run_section(
            chosen, warmup=config.warmup, steps=config.steps, widths=config.closure_widths
        )
        closure_section.write(adamw, rows, out / "closure.jsonl")
        echo(closure_section.render(adamw, rows, config.closure_widths))
    return results, out


def _build(
    chosen: Sequence[Entrant], matrices: tuple[Shape, ...], full: tuple[Shape, ...]
) -> list[Entry]:
    """Each entrant built on its own copy of the fixed parameters and gradients (its result
    holds the error where it cannot be built)."""
    base = {False: fixed_params(matrices, 0), True: fixed_params(full, 0)}
    entries: list[Entry] = []
    for e in chosen:
        params0, grads0 = base[e.full_set]
        # Own copies: some peers write into the gradient (heavyball's in-place transforms).
        params, grads = [p.clone() for p in params0], [g.clone() for g in grads0]
        set_grads(params, grads)
        result = Result(e, sum(p.numel() for p in params))
        try:
            stepper = e.make(params)
        except Exception as err:
            result.error = f"{type(err).__name__}: {err}"
            stepper = None
        entries.append((result, (stepper, params, grads)))
    return entries


def _time_entries(entries: list[Entry], config: SpeedConfig, probe: MatmulProbe) -> float:
    """The timed rounds: the head-to-head entrants first, then the rest (see below); the
    probe's median bf16 rate over the head-to-head rounds."""
    # The head-to-head entrants (Muon and AdamW of every library, the check) get rounds of their
    # own, with the probe, before the other matrix optimizers: a 15 s FISMO step or SOAP's
    # eigendecompositions between two Muon steps made single rounds of the full run swing by 20%.
    # The others are timed beside orthoptim:muon again (a second timing of the same optimizer)
    # and the probe, so that their "x muon" and "x floor" compare steps of the same rounds.
    head = [e for e in entries if e[0].entrant.family in HEAD_FAMILIES]
    rest = [e for e in entries if e[0].entrant.family not in HEAD_FAMILIES]
    muon = next((e for e in head if e[0].entrant.name == "orthoptim:muon"), None)
    head_rate = _time_phase(head, muon, config, probe)
    if rest:
        again = None if muon is None else (Result(muon[0].entrant, muon[0].params), muon[1])
        _time_phase(rest, again, config, probe)
    return head_rate


def _measure_after(entries: Sequence[Entry]) -> None:
    """After the timed rounds: each stepper's state bytes, one step's transient peak and its
    matmul FLOPs (gradients reset before each)."""
    for result, (stepper, params, grads) in entries:
        if stepper is None or result.error is not None:
            continue
        result.state_bytes = state_bytes(stepper, params)
        result.param_bytes = sum(p.numel() * p.element_size() for p in params)
        _prepare(stepper)
        set_grads(params, grads)
        result.transient_bytes = transient_peak(stepper.step)
        result.flops = count_flops(
            stepper.step, result.entrant.period, params, grads, functools.partial(_prepare, stepper)
        )


def _run_info(
    config: SpeedConfig,
    matrices: tuple[Shape, ...],
    full: tuple[Shape, ...],
    repeats: int,
    rates: dict[str, float],
    floor_ms: float,
) -> dict[str, Any]:
    """The run's protocol and rates, stored in every record (``run``)."""
    return {
        "command": config.command,
        "shapes": [list(s) for s in config.shapes],
        "layers": config.layers,
        "adamw_extra": [list(s) for s in config.adamw_extra],
        "matrix_params": sum(r * c for r, c in matrices),
        "full_params": sum(r * c for r, c in full),
        "warmup": config.warmup,
        "steps": config.steps,
        "threads": config.threads,
        "rate_size": config.rate_size,
        "rate_repeats": repeats,
        "rates": rates,
        "floor_ms": floor_ms,
        "not_timed": {
            n: why for n, why in not_timed().items() if config.specs is None or n in config.specs
        },
        "transient_method": "VmHWM above VmRSS (Linux /proc) after mallopt(M_MMAP_THRESHOLD=64KiB) "
        "and malloc_trim(0)",
    }


def _time_phase(
    entries: list[Entry], muon: Entry | None, config: SpeedConfig, probe: MatmulProbe
) -> float:
    """Rounds over ``entries`` with the probe and ``muon`` (orthoptim:muon's entry, timed with
    them unless it is one of them); sets each entry's rate and muon median alongside. Returns
    the probe's median rate."""
    timed = entries if muon is None or any(e is muon for e in entries) else [muon, *entries]
    rate = probe.flops / statistics.median(_rounds(timed, config, probe))
    for result, _ in entries:
        result.rate_alongside = rate
        if muon is not None and muon[0].times_s:
            result.muon_ms_alongside = muon[0].median_ms
    return rate


def _rounds(
    entries: Sequence[Entry],
    config: SpeedConfig,
    probe: MatmulProbe | None,
) -> list[float]:
    """Interleaved rounds over ``entries`` (each entrant's times go into its result); the probe's
    time in each timed round, when there is one."""
    probe_s: list[float] = []
    timed = {r.entrant.name: max(config.steps, r.entrant.period) for r, _ in entries}
    for round_ in range(config.warmup + max(timed.values(), default=0)):
        if probe is not None:
            start = time.perf_counter()
            probe.step()
            if round_ >= config.warmup:
                probe_s.append(time.perf_counter() - start)
        for result, (stepper, params, grads) in entries:
            if stepper is None or result.error is not None:
                continue
            if round_ >= config.warmup + timed[result.entrant.name]:
                continue
            _prepare(stepper)
            set_grads(params, grads)
            try:
                start = time.perf_counter()
                stepper.step()
                elapsed = time.perf_counter() - start
            except Exception as err:
                result.error = f"{type(err).__name__}: {err}"
                continue
            if round_ >= config.warmup:
                result.times_s.append(elapsed)
    return probe_s


def main_command() -> str:
    """The command line as typed, for the record."""
    return " ".join(["orthoptim", *sys.argv[1:]])
