"""The ``orthoptim`` command: each subcommand calls one library function."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from orthoptim import registry
from orthoptim.bench.models import MODELS


def _list(args: argparse.Namespace) -> int:
    matched = registry.names(args.pattern, tag=args.tag)
    if not matched:
        print(f"no optimizer matches {args.pattern!r}", file=sys.stderr)
        return 1
    width = max(len(n) for n in matched)
    for name in matched:
        spec = registry.get(name)
        print(f"{name.ljust(width)}  lr={spec.lr:<6g} {spec.paper}")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(registry.show(args.name))
    return 0


def _route(args: argparse.Namespace) -> int:
    model = MODELS[args.model]()
    print(f"{args.spec} on {args.model} ({sum(p.numel() for p in model.parameters()):,} params)")
    print(registry.build(args.spec, model).describe())
    return 0


def _estimate(args: argparse.Namespace) -> int:
    import torch

    from orthoptim.estimate import estimate

    with torch.device("meta"):  # shapes only: nothing is allocated
        model = _model(args.model)
    print(estimate(args.name, model, world_size=args.world_size))
    return 0


def _model(spec: str) -> nn.Module:
    """A built-in model's name, or ``MODULE:ATTR`` / ``FILE.py:ATTR``: an ``nn.Module`` class or
    a zero-argument function that returns one, called as it is."""
    if spec in MODELS:
        return MODELS[spec]()
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(
            f"--model must be one of {sorted(MODELS)} or MODULE:ATTR / FILE.py:ATTR, got {spec!r}"
        )
    if where.endswith(".py"):
        loaded = importlib.util.spec_from_file_location(Path(where).stem, where)
        if loaded is None or loaded.loader is None:
            raise ValueError(f"--model: cannot load {where!r}")
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    made = getattr(module, attr)()
    if not isinstance(made, nn.Module):
        raise TypeError(f"--model {spec!r} made a {type(made).__name__}, not an nn.Module")
    return made


def _race(args: argparse.Namespace) -> int:
    from orthoptim.bench.arena import protocol, sweep
    from orthoptim.bench.arena.tasks import TASKS
    from orthoptim.bench.shared.optional import MissingExtra

    quick = protocol.QUICK if args.quick else {}
    if args.final_from is not None and not args.final:
        raise ValueError("--from DIR adds the final to the race in DIR; it needs --final")
    config = protocol.RaceConfig(
        tasks=tuple(args.task) if args.task else TASKS,
        specs=tuple(args.spec) if args.spec else None,
        peers=not args.no_peers,
        lr_points=args.lr_grid if args.lr_grid is not None else quick.get("lr_points", 5),
        lr_span=args.lr_span,
        seeds=args.seeds if args.seeds is not None else quick.get("seeds", 3),
        adamw_route=args.adamw_route,
        extend_edges=not args.no_extend,
        quick=args.quick,
        data=args.data,
        steps=args.steps,
        out=args.out,
        progress=not args.no_progress,
        threads=args.threads if args.threads is not None else 1,
    )
    try:
        out = args.final_from if args.final_from is not None else sweep.race(config)
        if args.final:
            from orthoptim.bench.arena.final import run_final

            run_final(out, config)
    except MissingExtra as err:
        print(f"orthoptim: error: {err}", file=sys.stderr)
        return 2
    print(f"\nrecords, report.md and plots in {out}")
    return 0


def _speed(args: argparse.Namespace) -> int:
    from orthoptim.bench.speed import benchmark as speed

    if args.nproc is not None:
        from orthoptim.bench.speed import dist as speed_dist

        rows = speed_dist.run(
            speed_dist.DistConfig(
                shapes=speed_dist.shapes_or_default(args.shapes, speed.LAYER_SHAPES),
                layers=args.layers,
                nproc=args.nproc,
                spec=args.spec[0] if args.spec else "muon",
                threads=1,
            )
        )
        if args.out is not None:
            print(f"\nmeasurements in {speed_dist.write(rows, args.out)}")
        return 0
    config = speed.SpeedConfig(
        shapes=speed.parse_shapes(args.shapes) if args.shapes else speed.LAYER_SHAPES,
        layers=args.layers,
        adamw_extra=speed.parse_shapes(args.adamw_extra) if args.adamw_extra else (),
        specs=tuple(args.spec) if args.spec else None,
        peers=not args.no_peers,
        warmup=args.warmup,
        steps=args.steps,
        threads=args.threads,
        out=args.out,
        command=speed.main_command(),
    )
    _, out = speed.run(config)
    print(f"\nrecords in {out / 'records.jsonl'}")
    return 0


def _ops(args: argparse.Namespace) -> int:
    from orthoptim.bench.speed import ops
    from orthoptim.bench.speed.benchmark import main_command

    out = args.out or Path("runs") / f"ops-{dt.datetime.now():%Y%m%d-%H%M%S}"
    ops.run(args.spec, args.sets, args.steps, out, command=main_command())
    print(f"\nrecords in {out / 'records.jsonl'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from orthoptim.bench.arena import report
    from orthoptim.bench.shared.optional import MissingExtra

    try:
        print(report.render(args.dir, plots=not args.no_plots))
    except (FileNotFoundError, MissingExtra) as err:
        print(f"orthoptim: error: {err}", file=sys.stderr)
        return 2
    print(f"\nreport.md{'' if args.no_plots else ' and plots'} re-rendered in {args.dir}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orthoptim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="registered optimizers, their default lr and paper")
    ls.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'muon*'")
    ls.add_argument("--tag", default=None, help="only optimizers with this tag")
    ls.set_defaults(run=_list)
    show = sub.add_parser("show", help="an optimizer's chain, update rule, defaults, references")
    show.add_argument("name")
    show.set_defaults(run=_show)
    route = sub.add_parser("route", help="the routing table of an optimizer on a built-in model")
    route.add_argument("--model", choices=sorted(MODELS), default="tiny_gpt")
    route.add_argument("--spec", default="muon", help="registry name")
    route.set_defaults(run=_route)
    est = sub.add_parser(
        "estimate",
        help="an optimizer's state bytes and step FLOPs on a model, per route and rank",
        description="Built on the meta device: nothing is allocated and no step runs "
        "(orthoptim.estimate).",
    )
    est.add_argument("name", help="registry name")
    est.add_argument(
        "--model",
        default="tiny_gpt",
        help=f"{' | '.join(sorted(MODELS))} | MODULE:ATTR | FILE.py:ATTR (an nn.Module class or "
        "a function returning one; default tiny_gpt)",
    )
    est.add_argument(
        "--world-size", type=int, default=1, help="data-parallel ranks for the per-rank split"
    )
    est.set_defaults(run=_estimate)
    _race_parser(sub)
    _speed_parser(sub)
    _ops_parser(sub)
    report = sub.add_parser("report", help="re-render report.md and plots from DIR/records.jsonl")
    report.add_argument("dir", type=Path, help="a race's output folder")
    report.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    report.set_defaults(run=_report)
    return p


def _race_protocol_args(race: argparse.ArgumentParser) -> None:
    """The lr protocol of ``orthoptim race``: seeds, the sweep and the AdamW route's lr."""
    race.add_argument("--seeds", type=int, help="seeds at the picked lr (default 3; quick 2)")
    race.add_argument("--lr-grid", type=int, help="lr grid points (default 5; quick 3)")
    race.add_argument(
        "--lr-span", type=float, default=8.0, help="grid spans x1/SPAN..xSPAN (default 8)"
    )
    race.add_argument(
        "--adamw-route",
        choices=("tuned", "ratio", "sweep"),
        default="tuned",
        help="lr of every plan's AdamW route (embeddings, head, norms): tuned = the lr AdamW's "
        "own sweep picked on the task (default); ratio = the family's fixed ratio of the matrix "
        "lr; sweep = a coarse second axis around AdamW's pick",
    )
    race.add_argument(
        "--no-extend",
        action="store_true",
        help="do not extend a sweep whose picked lr sits at an edge of the grid",
    )


def _race_parser(sub: argparse._SubParsersAction) -> None:
    from orthoptim.bench.arena.tasks import FINAL, TASKS

    race = sub.add_parser(
        "race",
        help="race optimizers on real tasks: lr sweep, seeds, records, report, plots",
        description="AdamW sweeps first; every plan's AdamW route (embeddings, head, norms) "
        "runs at the lr it picked. Each optimizer gets the same log-spaced lr sweep around its "
        "registry default, extended while the pick sits at an edge; the lr is picked on "
        "held-out data, then seeds run at that lr. Writes "
        "records.jsonl, report.md and PNG plots. No argument: the default race (tens of "
        "minutes on 2 CPU cores; timed in benchmarks/records/*default-race*/README.md); "
        "--quick: under a minute.",
    )
    race.add_argument(
        "--task",
        nargs="+",
        choices=TASKS + FINAL,
        metavar="TASK",
        help=f"tasks: {', '.join(TASKS + FINAL)} (default: {', '.join(TASKS)})",
    )
    race.add_argument("--spec", nargs="+", help="registry name patterns (default: all)")
    _race_protocol_args(race)
    race.add_argument(
        "--final",
        action="store_true",
        help="then the final: lm_medium (a 3M-parameter GPT) for the 5 best racers, adamw, "
        "muon and the peers, into the same folder (about an hour on 2 CPU cores)",
    )
    race.add_argument(
        "--from",
        dest="final_from",
        type=Path,
        metavar="DIR",
        help="with --final: add the final to the finished race in DIR instead of racing again "
        "(an interrupted final resumes: its recorded runs are read back)",
    )
    race.add_argument("--quick", action="store_true", help="small tasks, under a minute")
    race.add_argument("--steps", type=int, help="override every task's number of steps")
    race.add_argument("--out", type=Path, help="output folder (default runs/<timestamp>)")
    race.add_argument(
        "--data", help="your own text file (with --task lm) or image folder (--task digits)"
    )
    race.add_argument("--no-peers", action="store_true", help="only orthoptim's optimizers")
    race.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads during the race (default 1: the models are tiny, and more "
        "threads spin on a busy machine)",
    )
    race.add_argument("--no-progress", action="store_true", help="no progress bar")
    race.set_defaults(run=_race)


def _speed_parser(sub: argparse._SubParsersAction) -> None:
    speed = sub.add_parser(
        "speed",
        help="time the optimizer step alone, side by side with the installed peers",
        description="Interleaved steps of orthoptim's matrix optimizers and AdamW and of every "
        "installed peer on the same matrices, median after warm-up, with the machine's bf16 / "
        "fp32 matmul rate and the Muon FLOP floor. Writes records.jsonl. Then optimizers that "
        "need step(closure) (and closure variants such as mars_adamw variant='exact'), each as "
        "a whole training step on a small MLP beside AdamW's, with forward and backward passes "
        "counted: closure.jsonl.",
    )
    speed.add_argument(
        "--shapes",
        help="one layer's matrices, ROWSxCOLS comma-separated (default "
        "1536x512,512x512,2048x512,512x2048)",
    )
    speed.add_argument("--layers", type=int, default=6, help="layers (default 6)")
    speed.add_argument(
        "--adamw-extra",
        default="8192x512",
        help="matrices AdamW entrants step in addition (default the 8192x512 embedding of the "
        "23.1M-param model; '' for none)",
    )
    speed.add_argument("--spec", nargs="+", help="orthoptim registry names (default: all)")
    speed.add_argument("--no-peers", action="store_true", help="only orthoptim's optimizers")
    speed.add_argument("--warmup", type=int, default=2, help="discarded rounds (default 2)")
    speed.add_argument("--steps", type=int, default=5, help="timed rounds (default 5)")
    speed.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    speed.add_argument("--out", type=Path, help="output folder (default runs/speed-<timestamp>)")
    speed.add_argument(
        "--nproc",
        type=int,
        help="instead: the distributed matrix step of --spec (default muon) on 1 process and on "
        "NPROC gloo ranks, 1 thread each: per-rank step time, bytes sent, ratio",
    )
    speed.set_defaults(run=_speed)


def _ops_parser(sub: argparse._SubParsersAction) -> None:
    ops = sub.add_parser(
        "ops",
        help="host reads and kernels per optimizer step (what decides GPU speed), on any device",
        description="Counts, with torch's dispatch and function modes, the host reads (item, "
        "bool, tolist, ...) and the aten kernels of each optimizer's step on a TinyGPT, "
        "orthoptim's with foreach=True (a GPU's default), beside torch's Muon + foreach AdamW. "
        "Writes records.jsonl and table.md.",
    )
    ops.add_argument(
        "--spec", nargs="+", help="registry names or torch:... entrants (default: all)"
    )
    ops.add_argument(
        "--sets",
        nargs="+",
        default=["gpt24", "gpt200"],
        choices=["gpt24", "gpt200"],
        help="parameter sets: 24 hidden matrices (65 tensors), 205 tensors (default both)",
    )
    ops.add_argument("--steps", type=int, default=3, help="counted steps (default 3)")
    ops.add_argument("--out", type=Path, help="output folder (default runs/ops-<timestamp>)")
    ops.set_defaults(run=_ops)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (KeyError, ValueError, TypeError) as err:
        print(f"orthoptim: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
