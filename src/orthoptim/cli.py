"""The ``orthoptim`` command: each subcommand calls one library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    route.add_argument("--spec", default="muon_adamw", help="registry name")
    route.set_defaults(run=_route)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (KeyError, ValueError, TypeError) as err:
        print(f"orthoptim: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
