"""A Lightning ``Callback`` logging ``opt.telemetry()`` (``orthoptim.telemetry``) through the
trainer's loggers. Importing this module imports Lightning; ``import orthoptim`` does not."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from orthoptim.integrations._unwrap import chain_optimizer
from orthoptim.telemetry import flat

__all__ = ["TelemetryCallback"]


class TelemetryCallback(Callback):
    """After each training batch whose step the optimizer measured (``build(...,
    telemetry_every=N)``), log its figures to every logger of the trainer (TensorBoard, W&B,
    CSV: ``trainer.loggers``) at the trainer's ``global_step``, as ``telemetry/{route}/{figure}``
    and, with ``per_parameter``, ``telemetry/param/{name}/{figure}``
    (``orthoptim.telemetry.flat``); with several optimizers, ``telemetry{i}/...``.

    The figures go to ``logger.log_metrics`` directly, not through ``pl_module.log_dict``,
    whose step-level values reach the loggers only every ``log_every_n_steps``: a measurement
    taken between two of those would be lost. ``ValueError`` at the start of training when an
    optimizer has telemetry off, ``TypeError`` when one is not an orthoptim optimizer.
    """

    def __init__(self, per_parameter: bool = False) -> None:
        self.per_parameter = per_parameter
        self._logged: dict[int, int] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for opt in trainer.optimizers:
            chain_optimizer(opt).telemetry()  # ValueError when it is off

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        several = len(trainer.optimizers) > 1
        metrics: dict[str, float] = {}
        for i, opt in enumerate(trainer.optimizers):
            report = chain_optimizer(opt).telemetry()
            if report["step"] is None or report["step"] == self._logged.get(i):
                continue
            self._logged[i] = report["step"]
            prefix = f"telemetry{i}" if several else "telemetry"
            metrics.update(flat(report, prefix, self.per_parameter))
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
