"""``orthoptim speed``: the optimizer step alone, timed side by side against the peers.

Why a separate benchmark from the race: the race measures time to a loss target, where the
forward/backward pass dominates; this one isolates ``optimizer.step()`` on a fixed set of matrix
shapes (the GPT-like default of issue 7), so a slow step cannot hide behind the model.

Protocol, all in one process so every entrant sees the same machine state:

* Every entrant gets its own copy of the same parameters and the same fixed gradients.
* Steps are interleaved: each round steps every entrant once, so drift in machine load (other
  processes, frequency changes) is spread over all of them instead of biasing one.
* The first ``warmup`` rounds are discarded (lazy state creation, allocator warm-up); the
  reported time is the median of the remaining rounds.
* The machine's bf16 and fp32 matmul rates are measured in the same run. The FLOP floor of a Muon
  step is the matmul FLOPs of its Newton-Schulz iterations (counted by
  ``torch.utils.flop_counter`` on a real step) divided by the bf16 rate.
* Memory: optimizer-state bytes per parameter (every tensor the optimizer keeps in ``state``),
  and the step's transient peak: the process's resident-set high-water mark during one step
  above its resident set before it (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).
  tracemalloc cannot see torch's CPU allocations and torch keeps no CPU allocator statistics.
  Before that step glibc is told to map large blocks separately and to release its cached free
  memory (``mallopt``, ``malloc_trim``), so memory the step reuses is faulted in again and
  counted (``None`` without glibc or ``/proc``).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import importlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from orthoptim import registry
from orthoptim.bench._optional import version_of
from orthoptim.bench.records import environment, plain

SPEED_SCHEMA = 1
Shape = tuple[int, int]
# One d=512 GPT block's hidden matrices (qkv, attention out, MLP up, MLP down), 6 blocks: 18.9M.
LAYER_SHAPES: tuple[Shape, ...] = ((1536, 512), (512, 512), (2048, 512), (512, 2048))
LAYERS = 6
# What the whole 23.1M-param model adds for AdamW: the 8192 x 512 token embedding (tied head).
ADAMW_EXTRA: tuple[Shape, ...] = ((8192, 512),)


class Stepper(Protocol):
    """Anything with a ``step()``: a torch optimizer or a wrapper of several."""

    def step(self) -> Any: ...


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
    transient_bytes: int | None = None
    error: str | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_s) * 1e3 if self.times_s else math.nan

    @property
    def mean_ms(self) -> float:
        """The mean over the timed steps: over a whole refresh period for an optimizer with
        periodic work (SOAP's eigenbasis, Shampoo's roots), its amortised cost."""
        return statistics.fmean(self.times_s) * 1e3 if self.times_s else math.nan


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """``"1536x512,512x512"`` -> ``((1536, 512), (512, 512))``; ``ValueError`` otherwise."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"shape {item!r} is not ROWSxCOLS (e.g. 1536x512)")
        shapes.append((int(parts[0]), int(parts[1])))
    return tuple(shapes)


def _muon_hyper() -> dict[str, Any]:
    """The registry ``muon``'s hyperparameters, so every peer runs the same algorithm."""
    from orthoptim.bench.peers import muon_defaults

    d = muon_defaults()
    return {"lr": d.lr, "momentum": d.momentum, "nesterov": d.nesterov, "ns_steps": d.ns_steps}


def _adamw_hyper() -> dict[str, Any]:
    from orthoptim.bench.peers import _only
    from orthoptim.transforms import ScaleByAdam

    spec = registry.get("adamw")
    adam = _only(spec.whole_model_plan().routes[0].chain, ScaleByAdam)
    return {"lr": spec.lr, "betas": adam.betas, "eps": adam.eps, "weight_decay": spec.weight_decay}


def refresh_period(name: str) -> int:
    """The longest period of a registered optimizer's periodic work (its ``*_every``
    options), 1 when it has none."""
    periods = [v for k, v in registry.get(name).options().items() if k.endswith("_every")]
    return max([1, *(int(v) for v in periods)])


def _orthoptim(name: str) -> Callable[[list[torch.Tensor]], Any]:
    def make(params: list[torch.Tensor]) -> Any:
        return registry.build(name, params)

    return make


def _torch_muon(params: list[torch.Tensor]) -> Any:
    h = _muon_hyper()
    return torch.optim.Muon(
        params,
        lr=h["lr"],
        weight_decay=0.0,
        momentum=h["momentum"],
        nesterov=h["nesterov"],
        ns_steps=h["ns_steps"],
        adjust_lr_fn="original",
    )


def _torch_adamw(fused: bool) -> Callable[[list[torch.Tensor]], Any]:
    def make(params: list[torch.Tensor]) -> Any:
        h = _adamw_hyper()
        return torch.optim.AdamW(params, fused=fused, foreach=None if fused else True, **h)

    return make


def _heavyball_muon(params: list[torch.Tensor]) -> Any:
    from orthoptim.bench.peers import _Eager, _heavyball

    hb, utils = _heavyball()
    h = _muon_hyper()
    opt = hb.Muon(
        params,
        lr=h["lr"],
        betas=(h["momentum"], 0.99),
        weight_decay=0.0,
        heavyball_momentum=True,
        nesterov=h["nesterov"],
        warmup_steps=0,
    )
    return _Eager(opt, utils)


def _heavyball_adamw(params: list[torch.Tensor]) -> Any:
    from orthoptim.bench.peers import _Eager, _heavyball

    hb, utils = _heavyball()
    h = _adamw_hyper()
    opt = hb.AdamW(
        params,
        lr=h["lr"],
        betas=h["betas"],
        eps=h["eps"],
        weight_decay=h["weight_decay"],
        warmup_steps=0,
    )
    return _Eager(opt, utils)


def _pytorch_optimizer_muon(params: list[torch.Tensor]) -> Any:
    po = importlib.import_module("pytorch_optimizer")
    h = _muon_hyper()
    return po.Muon(
        [{"params": params, "use_muon": True}],
        lr=h["lr"],
        momentum=h["momentum"],
        weight_decay=0.0,
        nesterov=h["nesterov"],
        ns_steps=h["ns_steps"],
        ns_coeffs="original",
        use_adjusted_lr=False,
    )


def not_timed() -> dict[str, str]:
    """Registered matrix optimizers the benchmark cannot step on bare matrices, and why."""
    out = {}
    for name in registry.names(tag="matrix"):
        spec = registry.get(name)
        if spec.needs_module:
            out[name] = "reads layer activations through module hooks (needs the nn.Module)"
        elif spec.needs_closure:
            out[name] = "needs a closure (two gradient evaluations per step)"
    return out


def entrants(specs: Sequence[str] | None = None, peers: bool = True) -> list[Entrant]:
    """orthoptim's ``muon``, ``adamw`` and every other registered matrix optimizer (plans
    excluded: on hidden matrices a plan runs its matrix chain, timed under the base name; so are
    those that need the ``nn.Module`` or a closure, see ``NOT_TIMED``), then every installed
    peer. ``specs`` keeps only the orthoptim names listed."""
    out = [
        Entrant("orthoptim:muon", "orthoptim", "muon", False, _orthoptim("muon")),
        Entrant("orthoptim:adamw", "orthoptim", "adamw", True, _orthoptim("adamw")),
    ]
    for name in registry.names(tag="matrix"):
        spec = registry.get(name)
        if name == "muon" or "plan" in spec.tags or name in not_timed():
            continue
        out.append(
            Entrant(
                f"orthoptim:{name}",
                "orthoptim",
                "matrix",
                False,
                _orthoptim(name),
                period=refresh_period(name),
            )
        )
    if specs is not None:
        out = [e for e in out if e.name.split(":", 1)[1] in specs]
    if not peers:
        return out
    if hasattr(torch.optim, "Muon"):
        out.append(Entrant("torch:muon", "torch", "muon", False, _torch_muon))
    out.append(Entrant("torch:adamw_fused", "torch", "adamw", True, _torch_adamw(True)))
    out.append(Entrant("torch:adamw_foreach", "torch", "adamw", True, _torch_adamw(False)))
    if version_of("heavyball") is not None:
        out.append(Entrant("heavyball:muon", "heavyball", "muon", False, _heavyball_muon))
        out.append(Entrant("heavyball:adamw", "heavyball", "adamw", True, _heavyball_adamw))
    if version_of("pytorch-optimizer") is not None:
        out.append(
            Entrant("pytorch_optimizer:muon", "pytorch-optimizer", "muon", False,
                    _pytorch_optimizer_muon)
        )  # fmt: skip
    return out


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of a ``size``-square matmul in ``dtype`` on this machine: the
    rate the FLOP floor is measured against (a large square product, near peak)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _optimizers(stepper: Any) -> list[Any]:
    if isinstance(stepper, torch.optim.Optimizer):
        return [stepper]
    return [o for inner in getattr(stepper, "optimizers", ()) for o in _optimizers(inner)]


def state_bytes(stepper: Any, params: Sequence[torch.Tensor]) -> int:
    """Bytes of every distinct tensor the optimizer keeps in ``state``: parameters and 0-D
    step counters excluded (a few bytes per tensor, not per parameter element)."""
    own = {p.data_ptr() for p in params}
    seen: dict[int, int] = {}
    for opt in _optimizers(stepper):
        for t in _tensors(dict(opt.state)):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in own and t.ndim > 0:
                seen[ptr] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_cached_memory() -> bool:
    """Make the C allocator hand freed memory back to the OS, so that memory a step reuses
    shows up in the resident set again: large blocks (>= 64 KiB) are mapped and unmapped on
    their own from now on (``mallopt(M_MMAP_THRESHOLD)``; this also stops glibc from raising
    the threshold), and the heap's free pages are released (``malloc_trim``). glibc only;
    called after the timed rounds, since separate mappings make allocation slower."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        ok = libc.mallopt(m_mmap_threshold, 64 * 1024) == 1
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return ok


def transient_peak(step: Callable[[], Any]) -> int | None:
    """Resident-set high-water mark during ``step()`` above the resident set before it, bytes;
    ``None`` where the C allocator's cache cannot be released or ``/proc`` is unavailable."""
    gc.collect()
    if not _release_cached_memory():
        return None
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    step()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


def count_flops(
    step: Callable[[], Any],
    period: int = 1,
    params: Sequence[torch.Tensor] = (),
    grads: Sequence[torch.Tensor] = (),
) -> int:
    """Matmul FLOPs of one ``step()`` (torch's FLOP counter: mm, bmm, addmm, baddbmm, ...),
    averaged over ``period`` steps (the gradients reset before each) for periodic work."""
    if period > 1:
        with FlopCounterMode(display=False) as counter:
            for _ in range(period):
                _set_grads(params, grads)
                step()
        return int(counter.get_total_flops()) // period
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _params(shapes: Sequence[Shape], seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    return params, grads


def _set_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """Give every parameter its fixed gradient again: some peers (heavyball) drop ``p.grad``
    after a step, and would otherwise step nothing from the second round on."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g


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


def run(config: SpeedConfig, echo: Callable[[str], None] = print) -> tuple[list[Result], Path]:
    """Run the benchmark, print the table, write ``records.jsonl``; the results and folder."""
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
    base = {False: _params(matrices, 0), True: _params(full, 0)}
    results, steppers = [], []
    for e in entrants(config.specs, config.peers):
        params0, grads0 = base[e.full_set]
        # Own copies: some peers write into the gradient (heavyball's in-place transforms).
        params, grads = [p.clone() for p in params0], [g.clone() for g in grads0]
        _set_grads(params, grads)
        result = Result(e, sum(p.numel() for p in params))
        try:
            stepper = e.make(params)
        except Exception as err:
            result.error = f"{type(err).__name__}: {err}"
            stepper = None
        results.append(result)
        steppers.append((stepper, params, grads))
    env = environment()  # before the rounds: its load average is the machine's, not ours
    bf16 = matmul_rate(torch.bfloat16, config.rate_size)
    fp32 = matmul_rate(torch.float32, config.rate_size)
    timed = {r.entrant.name: max(config.steps, r.entrant.period) for r in results}
    for round_ in range(config.warmup + max(timed.values(), default=0)):
        for result, (stepper, params, grads) in zip(results, steppers, strict=True):
            if stepper is None or result.error is not None:
                continue
            if round_ >= config.warmup + timed[result.entrant.name]:
                continue
            _set_grads(params, grads)
            try:
                start = time.perf_counter()
                stepper.step()
                elapsed = time.perf_counter() - start
            except Exception as err:
                result.error = f"{type(err).__name__}: {err}"
                continue
            if round_ >= config.warmup:
                result.times_s.append(elapsed)
    for result, (stepper, params, grads) in zip(results, steppers, strict=True):
        if stepper is None or result.error is not None:
            continue
        result.state_bytes = state_bytes(stepper, params)
        _set_grads(params, grads)
        result.transient_bytes = transient_peak(stepper.step)
        _set_grads(params, grads)
        result.flops = count_flops(stepper.step, result.entrant.period, params, grads)
    bf16_after = matmul_rate(torch.bfloat16, config.rate_size)
    rates = {"bf16_flops": max(bf16, bf16_after), "fp32_flops": fp32, "bf16_first": bf16,
             "bf16_last": bf16_after}  # fmt: skip
    summary = summarize(results, rates["bf16_flops"])
    out = config.out or Path("runs") / dt.datetime.now().strftime("speed-%Y-%m-%d_%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    run_info = {
        "command": config.command,
        "shapes": [list(s) for s in config.shapes],
        "layers": config.layers,
        "adamw_extra": [list(s) for s in config.adamw_extra],
        "matrix_params": sum(r * c for r, c in matrices),
        "full_params": sum(r * c for r, c in full),
        "warmup": config.warmup,
        "steps": config.steps,
        "threads": config.threads,
        "rates": rates,
        "floor_ms": summary["floor_ms"],
        "not_timed": {
            n: why for n, why in not_timed().items() if config.specs is None or n in config.specs
        },
        "transient_method": "VmHWM above VmRSS (Linux /proc) after mallopt(M_MMAP_THRESHOLD=64KiB) "
        "and malloc_trim(0)",
    }
    with (out / "records.jsonl").open("a", encoding="utf-8") as f:
        for result in results:
            row = summary["rows"][result.entrant.name]
            record = {
                "schema": SPEED_SCHEMA,
                "kind": "speed",
                "run": run_info,
                "name": result.entrant.name,
                "library": result.entrant.library,
                "family": result.entrant.family,
                "params": result.params,
                "step_ms_median": result.median_ms,
                "step_ms_mean": result.mean_ms,
                "period": result.entrant.period,
                "step_ms": [t * 1e3 for t in result.times_s],
                "flops": result.flops,
                "state_bytes": result.state_bytes,
                "transient_peak_bytes": result.transient_bytes,
                "error": result.error,
                **row,
                "env": env,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            f.write(json.dumps(plain(record), allow_nan=False, sort_keys=True) + "\n")
    echo(render(results, summary, rates, run_info))
    for name, why in run_info["not_timed"].items():
        echo(f"not timed: orthoptim:{name} ({why})")
    return results, out


RECORD_KEYS: tuple[str, ...] = (
    "schema", "kind", "run", "name", "library", "family", "params", "step_ms_median", "step_ms",
    "flops", "state_bytes", "transient_peak_bytes", "error", "ratio_fastest_peer", "ratio_floor",
    "ratio_muon", "state_bytes_per_param", "env", "finished_at",
)  # fmt: skip


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


def summarize(results: Sequence[Result], bf16_rate: float) -> dict[str, Any]:
    """Ratios: to the fastest peer of the same family, to the FLOP floor, to orthoptim's muon."""
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
        rows[r.entrant.name] = {
            "ratio_fastest_peer": ms / fastest[family] if family in fastest else math.nan,
            "ratio_floor": r.mean_ms / (r.flops / bf16_rate * 1e3) if r.flops else math.nan,
            # Amortised: the mean over a whole refresh period (the median for the rest).
            "ratio_muon": r.mean_ms / muon.mean_ms if muon is not None else math.nan,
            "own_floor_ms": r.flops / bf16_rate * 1e3 if r.flops else math.nan,
            "state_bytes_per_param": r.state_bytes / r.params if r.params else math.nan,
        }
    return {"rows": rows, "fastest": fastest, "floor_ms": floor_ms}


def _ours(r: Result) -> bool:
    return r.entrant.library == "orthoptim"


def _fmt(x: float, spec: str) -> str:
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
        f"matmul rate: bf16 {rates['bf16_flops'] / 1e9:.0f} GFLOP/s, fp32 "
        f"{rates['fp32_flops'] / 1e9:.0f} GFLOP/s; Muon FLOP floor "
        f"{_fmt(summary['floor_ms'], '.0f')} ms (NS matmul FLOPs / bf16 rate)",
        "",
        f"{'optimizer':<26}{'step ms':>9}{'mean ms':>9}{'x fastest peer':>16}{'x floor':>9}"
        f"{'x muon':>8}"
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
            f"{_fmt(row['ratio_muon'], '.2f'):>8}{_fmt(r.flops / 1e9, '.1f'):>8}"
            f"{_fmt(row['state_bytes_per_param'], '.2f'):>15}{_fmt(transient, '.1f'):>14}"
        )
    return "\n".join(lines)


def main_command() -> str:
    """The command line as typed, for the record."""
    return " ".join(["orthoptim", *sys.argv[1:]])
