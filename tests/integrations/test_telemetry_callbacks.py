"""The trainer callbacks log ``opt.telemetry()`` (``orthoptim.telemetry``) in real short fits:
the HF ``Trainer``'s ``state.log_history`` and the reporting callbacks after it, Lightning's
loggers (a ``CSVLogger``'s file). A plain ``SummaryWriter`` loop, as docs/integrations.md shows
it, with a stand-in writer (tensorboard is not a dependency)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

import orthoptim
from orthoptim.telemetry import flat
from tests.integrations.common import VOCAB, TinyLM, next_token_loss

EVERY, STEPS = 2, 4
KEY = "telemetry/muon/update_rms"
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]


def test_hf_trainer_logs_the_figures(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from orthoptim.integrations.transformers import TelemetryCallback, optimizer_cls_and_kwargs
    from tests.integrations.test_hf_trainer import Tokens, model_of

    class Reporter(TrainerCallback):  # stands for TensorBoard / W&B: records what it is given
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            self.seen.append(dict(logs or {}))

    for path in ("optimizers", "optimizer_cls_and_kwargs"):
        model = model_of("gpt2")
        args = TrainingArguments(
            output_dir=str(tmp_path / path),
            max_steps=STEPS,
            per_device_train_batch_size=4,
            save_strategy="no",
            logging_strategy="steps",
            logging_steps=1,
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
            seed=0,
            remove_unused_columns=False,
        )
        options = {"lr": 0.02, "adamw_lr": 1e-3, "telemetry_every": EVERY}
        if path == "optimizers":
            opt = orthoptim.build("muon", model, **options)
            trainer = Trainer(
                model=model, args=args, train_dataset=Tokens(), optimizers=(opt, None)
            )
        else:
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=Tokens(),
                optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("muon", **options),
            )
        reporter = Reporter()
        trainer.callback_handler.callbacks.insert(0, reporter)  # where report_to puts them
        TelemetryCallback(per_parameter=True).add_to(trainer)
        trainer.train()
        history = [r for r in trainer.state.log_history if "loss" in r]
        assert [r["step"] for r in history] == [1, 2, 3, 4]
        assert [KEY in r for r in history] == [False, True, False, True]  # measured: 2 and 4
        assert [KEY in r for r in reporter.seen if "loss" in r] == [False, True, False, True]
        inner = trainer.optimizer.optimizer  # the Trainer's AcceleratedOptimizer
        final = flat(inner.telemetry(), per_parameter=True)
        assert {k: history[-1][k] for k in final} == final
        assert history[-1]["telemetry/muon/polar_max"] >= history[-1]["telemetry/muon/polar_min"]


def test_hf_callback_refuses_an_optimizer_without_telemetry(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    from orthoptim.integrations.transformers import TelemetryCallback
    from tests.integrations.test_hf_trainer import Tokens, model_of

    model = model_of("gpt2")
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[], disable_tqdm=True
    )
    opt = orthoptim.build("muon", model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(),
        optimizers=(opt, None),
        callbacks=[TelemetryCallback()],
    )
    with pytest.raises(ValueError, match="telemetry is off"):
        trainer.train()


def test_lightning_logs_the_figures_to_its_loggers(tmp_path: Path) -> None:
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    from orthoptim.integrations.lightning import TelemetryCallback
    from tests.integrations.test_lightning import LitLM

    class Measured(LitLM):
        def configure_optimizers(self) -> Any:
            return orthoptim.build("muon", self, lr=0.02, telemetry_every=EVERY)

    ids = torch.randint(0, VOCAB, (16, 8), generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=4)
    module = Measured()
    trainer = L.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        max_steps=STEPS,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=50,  # the callback logs measured steps whatever the cadence
        callbacks=[TelemetryCallback(per_parameter=True)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    (metrics,) = tmp_path.glob("lightning_logs/*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get(KEY)]
    assert [int(r["step"]) for r in rows] == [2, 4]
    report = trainer.optimizers[0].telemetry()
    assert float(rows[-1][KEY]) == pytest.approx(report["routes"]["muon"]["update_rms"])
    assert float(rows[-1]["telemetry/param/net.fc1.weight/grad_norm"]) == pytest.approx(
        report["params"]["net.fc1.weight"]["grad_norm"]
    )


def test_a_plain_summary_writer_loop() -> None:
    """docs/integrations.md's loop, with a writer that records ``add_scalar`` calls."""

    class Writer:
        def __init__(self) -> None:
            self.scalars: list[tuple[str, float, int]] = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars.append((tag, value, step))

    writer = Writer()
    torch.manual_seed(0)
    model = TinyLM()
    opt = orthoptim.build("muon", model, lr=0.02, telemetry_every=EVERY)
    ids = torch.randint(0, VOCAB, (4, 9), generator=torch.Generator().manual_seed(1))
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        next_token_loss(model, ids).backward()
        opt.step()
        if step % EVERY == 0:
            for tag, value in flat(opt.telemetry()).items():
                writer.add_scalar(tag, value, step)
    steps = sorted({s for tag, _, s in writer.scalars if tag == KEY})
    assert steps == [2, 4]
