"""``transformers.Trainer`` trains with orthoptim both documented ways, and resumes exactly.

- ``optimizers=(orthoptim.build(name, model), None)``: the user builds the optimizer, the
  Trainer adds its lr scheduler;
- ``optimizer_cls_and_kwargs=orthoptim.integrations.transformers.optimizer_cls_and_kwargs(...)``:
  the Trainer builds it from its model, routed as ``build`` routes (checked against the zoo's
  hand-written roles).

A run of ``STEPS`` steps and a run stopped at its checkpoint of step ``SAVE_AT`` then resumed
with ``resume_from_checkpoint`` end with bit-identical parameters, optimizer state and lr (CPU,
seeded, a warmup + linear decay scheduler from the Trainer). Tiny configs, no downloads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("transformers")

import transformers
from transformers import Trainer, TrainingArguments

import orthoptim
from orthoptim.integrations.transformers import TrainerFactory, optimizer_cls_and_kwargs
from tests.distributed.harness import Ranks
from tests.integrations import zoo
from tests.integrations.common import assert_same_end, end_state, fresh_state, launched_env

VOCAB, SEQ, BATCH, N_SAMPLES = 128, 16, 4, 32
STEPS, SAVE_AT = 6, 3
PATHS = ("optimizers", "optimizer_cls_and_kwargs")

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
logging.getLogger("transformers").setLevel(logging.ERROR)


class Tokens(torch.utils.data.Dataset):
    """A fixed in-memory language-modelling set: ``{"input_ids", "labels"}`` rows."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (N_SAMPLES, SEQ), generator=g)

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def model_of(case: str) -> nn.Module:
    model, _, _ = zoo.CASES[case].build()  # seeded inside
    return model


def arguments(out: Path, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        save_strategy="steps",
        save_steps=SAVE_AT,
        lr_scheduler_type="linear",
        warmup_steps=2,
        logging_strategy="no",
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def trainer(path: str, model: nn.Module, out: Path, steps: int = STEPS) -> Trainer:
    args = arguments(out, steps)
    if path == "optimizers":
        opt = orthoptim.build("muon", model, lr=0.02, adamw_lr=1e-3)
        return Trainer(model=model, args=args, train_dataset=Tokens(), optimizers=(opt, None))
    return Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("muon", lr=0.02, adamw_lr=1e-3),
    )


def final_state(t: Trainer) -> dict[str, Any]:
    opt = t.optimizer
    while not isinstance(opt, orthoptim.ChainOptimizer):  # the Trainer's AcceleratedOptimizer
        opt = opt.optimizer
    return end_state(t.model.named_parameters(), opt.state_dict(), t.lr_scheduler.get_last_lr())


def straight_and_resumed(path: str, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The final state of a run of STEPS steps, and of one resumed from its checkpoint at
    SAVE_AT."""
    full = trainer(path, model_of("gpt2"), out / "full")
    full.train()
    want = final_state(full)
    assert (out / "full" / f"checkpoint-{SAVE_AT}" / "optimizer.pt").exists()
    fresh_state()
    resumed = trainer(path, model_of("gpt2"), out / "part")
    resumed.train(resume_from_checkpoint=str(out / "full" / f"checkpoint-{SAVE_AT}"))
    return want, final_state(resumed)


@pytest.mark.parametrize("path", PATHS)
def test_trains_and_resumes_bit_exactly(path: str, tmp_path: Path) -> None:
    want, got = straight_and_resumed(path, tmp_path)
    start = dict(model_of("gpt2").named_parameters())
    assert all(not torch.equal(p, start[n]) for n, p in want["params"].items()), "did not train"
    assert want["lr"][0] < 0.02  # the Trainer's linear decay moved the lr
    assert_same_end(got, want)


def ddp_on_rank(rank: int, path: str, out: str) -> dict[str, Tensor]:
    launched_env(rank)
    fresh_state()
    try:
        want, got = straight_and_resumed(path, Path(out))
        assert_same_end(got, want)
        return want["params"]
    finally:
        fresh_state()


@pytest.mark.parametrize("path", PATHS)
def test_ddp_two_processes_resume_and_agree(path: str, ranks: Ranks, tmp_path: Path) -> None:
    """Under ``torchrun`` the Trainer wraps the model in DDP after building the optimizer and
    saves the optimizer state from the main process alone: each rank resumes exactly and the
    ranks end bit-identical."""
    rank0, rank1 = ranks.run(ddp_on_rank, path, str(tmp_path))
    assert len(rank0) == len(rank1) > 0
    for n, p in rank0.items():
        assert torch.equal(p, rank1[n]), f"{n}: the ranks disagree"


@pytest.mark.parametrize("case", ["gpt2", "llama"])
def test_factory_routes_as_build(case: str, tmp_path: Path) -> None:
    model, _, rules = zoo.CASES[case].build()
    roles = zoo.expected_roles(model, rules)
    t = trainer("optimizer_cls_and_kwargs", model, tmp_path, steps=1)
    t.create_optimizer()
    opt = t.optimizer
    assert isinstance(opt, orthoptim.ChainOptimizer)
    placed = {n: g["role"] for g in opt.param_groups for n in g["param_names"]}
    assert placed == roles
    built = orthoptim.build("muon", model, lr=0.02, adamw_lr=1e-3)
    assert [(g["role"], g["param_names"], g["lr"]) for g in built.param_groups] == [
        (g["role"], g["param_names"], g["lr"]) for g in opt.param_groups
    ]


def test_options_are_checked_when_made() -> None:
    with pytest.raises(KeyError, match="unknown optimizer"):
        optimizer_cls_and_kwargs("muonn")
    with pytest.raises(TypeError):
        optimizer_cls_and_kwargs("muon", not_an_option=1)


def test_param_groups_are_refused() -> None:
    model = model_of("gpt2")
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    with pytest.raises(TypeError, match="no parameter names"):
        TrainerFactory(groups, name="muon")
    with pytest.raises(TypeError, match="not the model"):
        TrainerFactory()(groups, name="muon")


def test_keywords_match_build() -> None:
    import inspect

    theirs = dict(inspect.signature(orthoptim.build).parameters)
    del theirs["params_or_model"]
    ours = dict(inspect.signature(optimizer_cls_and_kwargs).parameters)
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


def test_hooks_are_refused_under_several_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    import orthoptim.integrations.transformers as hf

    model = model_of("gpt2")
    monkeypatch.setattr(hf, "_world_size", lambda: 2)
    with pytest.raises(ValueError, match="drift apart"):
        TrainerFactory()(model, name="mkor")
    assert isinstance(TrainerFactory()(model, name="muon"), orthoptim.ChainOptimizer)
    monkeypatch.setattr(hf, "_world_size", lambda: 1)
    assert isinstance(TrainerFactory()(model, name="mkor"), orthoptim.ChainOptimizer)


def test_importing_the_integration_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, orthoptim.integrations.transformers; "
        "assert 'transformers' not in sys.modules, 'imported transformers'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_documented_snippets_compile_and_name_what_exists() -> None:
    """The Python blocks of docs/integrations.md and README's trainer section are valid Python,
    and README shows the same calls as the docs."""
    import re

    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "integrations.md").read_text()
    readme = (root / "README.md").read_text()
    section = readme.split("## Trainers\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", docs, flags=re.S)
    readme_blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 7 and len(readme_blocks) == 2
    for i, code in enumerate(blocks + readme_blocks):
        compile(code, f"snippet {i}", "exec")
    for line in ('optimizer_cls_and_kwargs("muon", lr=0.02, adamw_lr=3e-4)', '"interval": "step"'):
        assert line in docs and line in section
