"""mkdocs hook: the pages generated from the code at build time.

- ``optimizers/index.md``: every registered optimizer, its paper and default lr;
- ``optimizers/<name>.md``: one page per registered optimizer: ``registry.show`` (paper,
  reference pin, defaults, options, each route's update rule from its transforms' formulas)
  and the recipe's docstring (the paper, the options' sources, "Differences from the
  reference");
- ``routing.md``: the routing rules with ``orthoptim route``'s output on the embedded models;
- ``race.md``: the race protocol and headline of the newest curated default race.

The optimizer pages also give the state bytes on the embedded ``tiny_gpt``
(``orthoptim.estimate``), the optimizer's newest curated ``orthoptim speed`` row and its rows
in the newest curated default race (``benchmarks/records``).

The optimizer pages are added to the nav under "Optimizers" here, so a new registry entry gets
its page without an edit to ``mkdocs.yml``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from orthoptim import estimate, registry
from orthoptim.bench.arena import records
from orthoptim.bench.arena.report import HEADER, markdown_table, protocol_and_headline, table_rows
from orthoptim.bench.arena.summary import Record, summarize
from orthoptim.bench.models import MODELS
from orthoptim.bench.speed import report as speed_report
from orthoptim.routing import HEAD_NAMES

_ROUTED = ("muon", "soap")
_RECORDS = Path(__file__).resolve().parents[2] / "benchmarks" / "records"


def _curated(kind: str) -> dict[str, list[Record]]:
    """The curated records of ``kind`` ("speed" or "race"), by folder name; a folder's kind is
    named in its first record (race records name none), as ``tests/bench/test_curated.py``
    tells them apart."""
    read = {"race": records.read, "speed": speed_report.read}[kind]
    found: dict[str, list[Record]] = {}
    for path in sorted(_RECORDS.glob(f"*/{records.RECORDS}")):
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        other = next((k for k in ("speed", "ops", "script") if f'"kind": "{k}"' in first), "race")
        if other == kind:
            found[path.parent.name] = read(path)
    return found


def _newest_race() -> tuple[str, list[Record]] | None:
    """The newest curated race of the default protocol (all tasks, not ``--quick``)."""
    races = [
        (max(r["finished_at"] for r in recs), folder, recs)
        for folder, recs in _curated("race").items()
        if "default-race" in folder and not recs[0]["race"].get("quick")
    ]
    if not races:
        return None
    _, folder, recs = max(races, key=lambda race: race[0])
    return folder, recs


def _speed_section(name: str) -> list[str]:
    rows = [
        (r["finished_at"], folder, r)
        for folder, recs in _curated("speed").items()
        for r in recs
        if r["name"] == f"orthoptim:{name}"
    ]
    if not rows:
        return ["Not timed by a curated `orthoptim speed` run yet.", ""]
    _, folder, r = max(rows, key=lambda row: row[0])
    floor = "-" if r.get("ratio_floor") is None else f"{r['ratio_floor']:.2f}"
    return [
        f"From `benchmarks/records/{folder}` (`{r['run']['command']}`, "
        f"{r['run']['layers'] * len(r['run']['shapes'])} matrices, {r['env']['threads']} "
        f"threads, {r['env']['cpu']}):",
        "",
        markdown_table(
            ("step ms", "mean ms", "x muon", "x FLOP floor", "state B/param"),
            [
                (
                    f"{r['step_ms_median']:.1f}",
                    f"{r['step_ms_mean']:.1f}",
                    "-" if r.get("ratio_muon") is None else f"{r['ratio_muon']:.2f}",
                    floor,
                    f"{r['state_bytes_per_param']:.2f}",
                )
            ],
        ),
        "",
    ]


def _race_section(name: str) -> list[str]:
    only = registry.get(name).race_tasks
    note = [] if only is None else [f"Races only on {', '.join(only)} (`Spec.race_tasks`).", ""]
    return note + _race_rows(name)


def _newest_race_with(name: str) -> tuple[str, list[Record]] | None:
    """The newest curated full-protocol race (not ``--quick``) that raced ``name``: the
    default race, or a race of newer optimizers (``--spec``) where they came after it."""
    races = [
        (max(r["finished_at"] for r in recs), folder, recs)
        for folder, recs in _curated("race").items()
        if not recs[0]["race"].get("quick") and any(r["racer"] == name for r in recs)
    ]
    if not races:
        return None
    _, folder, recs = max(races, key=lambda race: race[0])
    return folder, recs


def _race_rows(name: str) -> list[str]:
    newest = _newest_race_with(name)
    if newest is None:
        return ["Not in a curated race yet.", ""]
    folder, recs = newest
    lines = [f"From `benchmarks/records/{folder}` (`{recs[0]['race']['command']}`):", ""]
    cells = [
        (task, *cell)
        for task, rows in summarize(recs).items()
        for row, cell in zip(rows, table_rows(rows), strict=True)
        if row.label == name
    ]
    if not cells:
        return ["Not in a curated race yet.", ""]
    header = ("task", *(h.format(metric="held-out metric") for h in HEADER))
    return [*lines, markdown_table(header, cells), ""]


_TINY_PARAMS = sum(p.numel() for p in MODELS["tiny_gpt"]().parameters())


def _optimizer_page(name: str) -> str:
    spec = registry.get(name)
    doc = inspect.cleandoc(spec.recipe.__doc__ or "(no docstring)")
    return "\n".join(
        [
            f"# `{name}`",
            "",
            f"{spec.paper}",
            "",
            "```python",
            f'opt = orthoptim.build("{name}", model)  # lr={spec.lr:g} by default',
            "```",
            "",
            "## The registry's view (`orthoptim show " + name + "`)",
            "",
            "```text",
            registry.show(name),
            "```",
            "",
            "## Memory",
            "",
            f"State on the embedded `tiny_gpt` ({_TINY_PARAMS:,} parameters): "
            f"{estimate(name, MODELS['tiny_gpt']()).state_bytes:,} bytes "
            "(`orthoptim.estimate`, `orthoptim estimate " + name + " --model tiny_gpt`).",
            "",
            "## Step speed",
            "",
            *_speed_section(name),
            "## Race",
            "",
            *_race_section(name),
            f"## The recipe (`{spec.recipe.__module__}.{spec.recipe.__name__}`)",
            "",
            "```text",
            doc,
            "```",
            "",
        ]
    )


def _index_page(names: list[str]) -> str:
    rows = [
        f"| [`{n}`]({n}.md) | {registry.get(n).lr:g} | {registry.get(n).paper} |" for n in names
    ]
    return "\n".join(
        [
            "# Optimizers",
            "",
            "Every registered optimizer (`orthoptim list`), generated from the registry. Each page",
            "gives the paper, the reference the conventions are pinned to, the defaults and",
            "options, the update rule of each route, and the recipe's docstring with its",
            "differences from the reference.",
            "",
            "| name | default lr | paper |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )


def _routing_page() -> str:
    parts = [
        "# Routing",
        "",
        "`orthoptim.build(name, model)` covers the whole model. A matrix optimizer (such as",
        "`muon`) brings an AdamW route: hidden weight matrices (and conv kernels, as their",
        "`(out, in*kh*kw)` view) go to the matrix optimizer; embeddings, the output head, biases",
        "and normalisation gains go to AdamW. The roles are read from module types and",
        f"parameter names (head names: {', '.join(f'`{h}`' for h in HEAD_NAMES)}); `overrides=`",
        "moves a parameter by name, `layouts=` declares a weight's matrix layout (e.g. GPT-2's",
        '`Conv1D`, stored `(in, out)`). A param group with a `"role"` key is routed the same',
        "way. `opt.describe()` prints the result; the command line shows it for the embedded",
        "models:",
        "",
    ]
    for model_name in sorted(MODELS):
        for name in _ROUTED:
            model = MODELS[model_name]()
            count = sum(p.numel() for p in model.parameters())
            parts += [
                f"## `orthoptim route --model {model_name} --spec {name}`",
                "",
                "```text",
                f"{name} on {model_name} ({count:,} params)",
                registry.build(name, model).describe(),
                "```",
                "",
            ]
    return "\n".join(parts)


def _race_page() -> str:
    parts = [
        "# The race",
        "",
        "`orthoptim race` trains real models on data that ships with the installed packages",
        "(a character-level language model, scikit-learn's digits, a quadratic, matrix",
        "sensing) with every registered optimizer and the installed peers, tunes each one's lr",
        "the same way, and reports time and steps to a target against AdamW, the optimizer's",
        "share of the step, its state bytes and peak memory (`orthoptim race --help`;",
        "`orthoptim report DIR` re-renders a run's `report.md` and plots from its records).",
        "",
    ]
    only = [(n, registry.get(n).race_tasks) for n in registry.names("*")]
    only = [(n, t) for n, t in only if t is not None]
    if only:
        parts += [
            "Optimizers realistic only for small models race only on the tasks their",
            "`Spec.race_tasks` names; the race records the other tasks as skipped, with the",
            "reason: " + ", ".join(f"`{n}` ({', '.join(t)})" for n, t in only) + ".",
            "",
        ]
    newest = _newest_race()
    if newest is not None:
        folder, recs = newest
        parts += [
            f"The newest curated default race, `benchmarks/records/{folder}`",
            f"(`{recs[0]['race']['command']}`):",
            "",
            protocol_and_headline(recs),
        ]
    return "\n".join(parts)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    names = registry.names("*")
    files.append(File.generated(config, "optimizers/index.md", content=_index_page(names)))
    for name in names:
        files.append(File.generated(config, f"optimizers/{name}.md", content=_optimizer_page(name)))
    files.append(File.generated(config, "routing.md", content=_routing_page()))
    files.append(File.generated(config, "race.md", content=_race_page()))
    return files


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    names = registry.names("*")
    nav: list[Any] = config["nav"]
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and "Optimizers" in entry:
            nav[i] = {"Optimizers": ["optimizers/index.md", *(f"optimizers/{n}.md" for n in names)]}
    return config
