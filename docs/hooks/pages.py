"""mkdocs hook: the pages generated from the code at build time.

- ``optimizers/index.md``: every registered optimizer, its paper and default lr;
- ``optimizers/<name>.md``: one page per registered optimizer: ``registry.show`` (paper,
  reference pin, defaults, options, each route's update rule from its transforms' formulas)
  and the recipe's docstring (the paper, the options' sources, "Differences from the
  reference");
- ``routing.md``: the routing rules with ``orthoptim route``'s output on the embedded models.

The optimizer pages are added to the nav under "Optimizers" here, so a new registry entry gets
its page without an edit to ``mkdocs.yml``.
"""

from __future__ import annotations

import inspect
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from orthoptim import registry
from orthoptim.bench.models import MODELS
from orthoptim.routing import HEAD_NAMES

_ROUTED = ("muon", "soap")


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


def on_files(files: Files, config: MkDocsConfig) -> Files:
    names = registry.names("*")
    files.append(File.generated(config, "optimizers/index.md", content=_index_page(names)))
    for name in names:
        files.append(File.generated(config, f"optimizers/{name}.md", content=_optimizer_page(name)))
    files.append(File.generated(config, "routing.md", content=_routing_page()))
    return files


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    names = registry.names("*")
    nav: list[Any] = config["nav"]
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and "Optimizers" in entry:
            nav[i] = {"Optimizers": ["optimizers/index.md", *(f"optimizers/{n}.md" for n in names)]}
    return config
