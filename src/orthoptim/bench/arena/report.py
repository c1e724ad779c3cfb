"""Tables and ``report.md``, rendered from records alone (``orthoptim report DIR`` never
re-runs anything): the terminal tables, the markdown report, and (optionally) the PNG plots."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orthoptim.bench.arena import records
from orthoptim.bench.arena.claims import UNCLAIMED_NOTE, claims_for
from orthoptim.bench.arena.summary import Record, Row, baseline, headline, ratio, summarize

REPORT = "report.md"


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:,.0f} MiB"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


HEADER = (
    "optimizer",
    "lr (x default)",
    "AdamW-route lr",
    "reached",
    "steps to target",
    "time to target s",
    "time / AdamW",
    "steps / AdamW",
    "final {metric}",
    "opt step ms (share)",
    "opt GFLOP/step (share)",
    "state",
    "peak RSS",
)


def table_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The headline table of one task: one tuple of cells per racer."""
    base = baseline(rows)
    out: list[tuple[str, ...]] = []
    for row in rows:
        t, s = ratio(row, base, "time"), ratio(row, base, "steps")
        reached = row.steps_to_target.n
        share = "" if row.opt_share is None else f" ({row.opt_share:.0%})"
        out.append(
            (
                row.label,
                f"{row.lr:.3g} (x{row.lr_factor:.3g}){' edge' if row.at_edge else ''}",
                _route_lr(row),
                f"{reached}/{row.steps_to_target.of}",
                row.steps_to_target.show("{:.0f}"),
                row.time_to_target.show("{:.3g}"),
                "-" if t is None else t.show("{:.2f}"),
                "-" if s is None else s.show("{:.2f}"),
                row.final_target.show("{:.4g}"),
                _ms(row.opt_step_s) + share,
                _gflop(row),
                _kib(row.state_bytes),
                _mib(row.peak_rss_bytes),
            )
        )
    return out


def _gflop(row: Row) -> str:
    """Estimated optimizer GFLOP per step and its share of the step's FLOPs (model + it)."""
    if row.opt_flops is None or not row.train_flops:
        return "-"
    return f"{row.opt_flops / 1e9:.3g} ({row.opt_flops / row.train_flops:.0%})"


def _grid_line(rows: Sequence[Row]) -> str:
    """The task's lr grid (the final's differs from the small tasks': narrower, centred on each
    racer's pick on ``lm``) and its seeds."""
    race = rows[0].seeds[0]["race"]
    factors = ", ".join(f"x{f:.3g}" for f in race["lr_factors"])
    seeds = max(len(r.seeds) for r in rows)
    return (
        f"- LR grid: {factors} times each racer's centre lr (`lr_center` in the records: the "
        "registry default, or in the final the racer's pick on `lm`), extended at edges; "
        f"{seeds} seed(s) at the pick ({race['seeds']} planned)."
    )


def _route_lr(row: Row) -> str:
    """The AdamW route's lr of a plan (``x f`` of AdamW's pick in a two-axis sweep)."""
    if row.adamw_lr is None:
        return "-"
    factor = row.adamw_lr_factor
    return f"{row.adamw_lr:.3g}" + ("" if factor in (None, 1.0) else f" (x{factor:g})")


def _header(rows: Sequence[Row]) -> tuple[str, ...]:
    metric = rows[0].seeds[0]["target"]["metric"] if rows else "metric"
    return tuple(h.format(metric=metric) for h in HEADER)


def terminal(summary: Mapping[str, Sequence[Row]]) -> str:
    """Plain-text tables, one per task, for the end of ``orthoptim race``."""
    blocks = []
    for task, rows in summary.items():
        if not rows:
            continue
        t = rows[0].seeds[0]["target"]
        head = f"{task}: target {t['metric']} {'<=' if t['mode'] == 'min' else '>='} {t['value']}"
        cells = [_header(rows), *table_rows(rows)]
        widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        blocks.append(head + "\n" + "\n".join(line.rstrip() for line in lines))
    return "\n\n".join(blocks)


def headline_text(summary: Mapping[str, Sequence[Row]]) -> str:
    """The headline table as aligned text (time to target relative to AdamW)."""
    cells = [("time to target / AdamW", *summary), *headline(summary)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc: Callable[[str], str] = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sweep_table(rows: Sequence[Row]) -> str:
    factors = sorted({f for row in rows for f, _, _ in row.sweep})
    metric = rows[0].seeds[0]["select_metric"]
    body = []
    for row in rows:
        cells = {f: "diverged" if d else "-" if v is None else f"{v:.4g}" for f, v, d in row.sweep}
        cells[row.lr_factor] = f"**{cells[row.lr_factor]}**"
        body.append((row.label, *(cells.get(f, "") for f in factors)))
    header = (f"final {metric} at lr x", *(f"{f:.3g}" for f in factors))
    return markdown_table(header, body)


def _claims(summary: Mapping[str, Sequence[Row]]) -> list[str]:
    raced = sorted({r.racer for rows in summary.values() for r in rows})
    lines = [
        "## Published claims beside measured figures",
        "",
        "Measured: the claimed optimizer over each baseline, seed by seed (below 1: faster).",
        "",
    ]
    for claim in claims_for(raced):
        kind = "" if claim.quantitative else " (qualitative)"
        lines.append(
            f'- **{claim.optimizer}**{kind}: "{claim.text}" (measured there at: '
            f"{claim.scale}; {claim.source})."
        )
        for task, rows in summary.items():
            mine = baseline(rows, claim.optimizer)
            for versus in claim.versus:
                base = baseline(rows, versus)
                cells = []
                for measure in ("steps", "time"):
                    r = None if mine is None else ratio(mine, base, measure)
                    cells.append(f"{measure} {'-' if r is None else r.show('{:.2f}')}")
                lines.append(
                    f"  - here, {task}, {claim.optimizer} / {versus} to target: {', '.join(cells)}"
                )
    lines.append(f"- {UNCLAIMED_NOTE}")
    return lines


def _route_rule(race: Mapping[str, Any]) -> str:
    """The protocol line on the AdamW route of plans (records before it ran at the ratio)."""
    rule = race.get("adamw_route", "ratio")
    if rule == "tuned":
        return (
            "The AdamW route of every plan (embeddings, head, biases, norms of a matrix "
            "optimizer, ours and the peers') runs at the lr AdamW's own sweep picked on the task "
            "(column `AdamW-route lr`); AdamW's sweep runs first.\n"
        )
    if rule == "sweep":
        factors = ", ".join(f"x{f:g}" for f in race.get("route_factors", []))
        return (
            "The AdamW route of every plan is swept too: a second axis at "
            f"{factors} the lr AdamW's own sweep picked on the task (column `AdamW-route lr`).\n"
        )
    return (
        "The AdamW route of every plan runs at its family's fixed ratio of the matrix lr "
        "(`adamw_lr_scale`, e.g. 0.015 for Muon).\n"
    )


def markdown(recs: Sequence[Record], summary: Mapping[str, Sequence[Row]]) -> str:
    """The whole ``report.md``: protocol, environment, one section per task, claims, notes."""
    race, env = recs[0]["race"], recs[0]["env"]
    lines = [f"# orthoptim race {race['id']}", "", f"Command: `{race['command']}`", ""]
    lines += _protocol(race)
    lines += _headline_section(summary)
    lines += _environment(env)
    for task, rows in summary.items():
        if rows:
            lines += _task_section(task, rows)
    lines += _claims(summary)
    lines += _notes(race)
    lines += _configurations(summary)
    return "\n".join(lines).rstrip() + "\n"


def protocol_and_headline(recs: Sequence[Record]) -> str:
    """The protocol and headline sections of ``markdown`` alone (the documentation's race
    page shows them for the newest curated race)."""
    return "\n".join(_protocol(recs[0]["race"]) + _headline_section(summarize(recs)))


def _protocol(race: Mapping[str, Any]) -> list[str]:
    """The ``## Protocol`` section: grid, AdamW route, edges, pick, seeds, what is measured."""
    factors = ", ".join(f"x{f:.3g}" for f in race["lr_factors"])
    return [
        "## Protocol",
        "",
        f"- Every optimizer gets the same lr sweep: {len(race['lr_factors'])} points ({factors}) "
        "around its registry default (peers: the default of the algorithm they mirror), seed 0.",
        "- "
        + _route_rule(race)
        + (
            f"- Edges: while a racer's pick is the largest or smallest lr of its sweep, the grid "
            f"extends by its own factor in that direction, up to {race['max_extensions']} points "
            "per side, until the pick is interior or the run beyond it diverges; a pick still at "
            "an edge is marked `edge`.\n"
            if race.get("max_extensions")
            else "- Edges: no extension (a pick at an edge of the grid is marked `edge`).\n"
        )
        + "- The lr is picked on the held-out metric at the end of the run (named in each sweep "
        "table); then seeds "
        f"0..{race['seeds'] - 1} at that lr (the sweep's seed-0 run is seed 0).",
        "- Time to target: training time (forward, backward, optimizer step; evaluation "
        "excluded) until the first evaluation that meets the target; steps likewise. "
        "Cells read `median [min-max]` over seeds; `n/r`: not reached within the run; "
        "`(k/n)`: seeds that reached it.",
        "- Ratios pair seed s with AdamW's seed s (below 1: faster than AdamW).",
        "- Opt step: median optimizer-step time and its share of the median whole step. "
        "Opt GFLOP/step: the optimizer's estimated FLOPs per step (`Transform.cost`; peers: "
        "the algorithm they mirror) and their share of the step's FLOPs with the model's "
        "forward and backward matmuls (torch's FLOP counter). "
        "State: exact bytes of the optimizer's state tensors. Peak RSS: process high-water "
        "mark during the run.",
        "",
    ]


def _headline_section(summary: Mapping[str, Sequence[Row]]) -> list[str]:
    return [
        "## Headline: time to target relative to AdamW",
        "",
        "Median [min-max] over seeds of (training seconds to the target) / (AdamW's, same seed); "
        "below 1 is faster. `n/r`: the target was not reached. The same in steps follows.",
        "",
        markdown_table(("optimizer", *summary), headline(summary, "time")),
        "",
        markdown_table(("steps / AdamW", *summary), headline(summary, "steps")),
        "",
    ]


def _environment(env: Mapping[str, Any]) -> list[str]:
    return [
        "## Environment",
        "",
        markdown_table(
            ("orthoptim", "git", "torch", "python", "threads", "cpu", "load at start"),
            [
                (
                    str(env["orthoptim"]),
                    f"{(env['git_sha'] or '-')[:10]}{' (dirty)' if env.get('git_dirty') else ''}",
                    env["torch"],
                    env["python"],
                    str(env["threads"]),
                    f"{env['cpu']} ({env.get('cpu_count')} cores)",
                    " ".join(f"{x:.2f}" for x in env.get("loadavg_start") or []),
                )
            ],
        ),
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v),
        "",
    ]


def _task_section(task: str, rows: Sequence[Row]) -> list[str]:
    """One task: model, data, target, grid, its table, its sweep table, plots, edge notes."""
    cfg, t = rows[0].seeds[0]["task_config"], rows[0].seeds[0]["target"]
    lines = [
        f"## {task}",
        "",
        f"- Model: {cfg.get('model', '-')}; {cfg.get('steps')} steps, evaluated every "
        f"{cfg.get('eval_every')}.",
        f"- Data: {cfg.get('source', '-')}.",
        f"- Target: {t['metric']} {'<=' if t['mode'] == 'min' else '>='} {t['value']}.",
        _grid_line(rows),
        "",
        markdown_table(_header(rows), table_rows(rows)),
        "",
        _sweep_table(rows),
        "",
        f"![{task} curves]({task}_curves.png)",
        "",
        f"![{task} every racer, by family]({task}_curves_all.png)",
        "",
        f"![{task} time to target]({task}_time_to_target.png)",
        "",
    ]
    for row in rows:
        if row.at_edge:
            lines.append(
                f"- {row.label}: the picked lr is still at an edge of its sweep "
                f"({row.extensions} point(s) added beyond the base grid)."
            )
        for err in dict.fromkeys(row.errors):
            lines.append(f"- {row.label}: a run failed: {err}")
    lines.append("")
    return lines


def _notes(race: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Notes", ""]
    lines += [
        f"- {alias}: same whole-model optimizer as {kept} (plan repr, lr, weight decay); "
        f"raced once, as {kept}"
        for alias, kept in race["aliases"].items()
    ]
    lines += [f"- {note}" for note in race.get("notes", [])]
    lines += [f"- {s['racer']} did not race {s['task']}: {s['reason']}" for s in race["skipped"]]
    return lines


def _configurations(summary: Mapping[str, Sequence[Row]]) -> list[str]:
    """Each racer's exact configuration, from its first seed run on the first task."""
    lines = [
        "",
        "## Configurations",
        "",
        "The exact configuration of each racer (first seed run, first task):",
        "",
    ]
    seen = set()
    for rows in summary.values():
        for row in rows:
            if row.racer in seen or not row.seeds[0]["recipe"]:
                continue
            seen.add(row.racer)
            lines.append(f"- `{row.racer}` ({row.library}):")
            for opt in row.seeds[0]["recipe"]:
                recipe = opt.get("recipe")
                lines.append(f"  - `{opt['class']}`" + (f": `{recipe}`" if recipe else ""))
                for g in opt["groups"]:
                    lines.append(f"    - group `{g}`")
    return lines


def render(directory: Path, plots: bool = True) -> str:
    """Write ``report.md`` (and the PNG plots) in ``directory`` from its ``records.jsonl``;
    return the terminal table."""
    directory = Path(directory)
    recs = records.read(directory / records.RECORDS)
    summary = summarize(recs)
    (directory / REPORT).write_text(markdown(recs, summary), encoding="utf-8")
    if plots:
        from orthoptim.bench.arena.figures import plot_all

        plot_all(summary, directory)
    return terminal(summary) + "\n\n" + headline_text(summary)
