"""The Hugging Face ``Trainer``'s ``optimizer_cls_and_kwargs`` for any registered optimizer.

Two documented ways to train with ``transformers.Trainer`` (``docs/integrations.md``):

- ``Trainer(model, args, optimizers=(orthoptim.build(name, model, ...), None))``: the optimizer
  is built by the user from the model, the Trainer adds its lr scheduler;
- ``Trainer(model, args, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(name, ...))``: the
  Trainer builds it when training starts (after ``model_init``, for hyperparameter searches).

Why a factory and not an optimizer class. For a ``torch.optim.Optimizer`` subclass the Trainer
calls ``cls(groups, **kwargs)`` with two param groups (decay / no decay, from
``get_decay_parameter_names``) that carry neither names nor roles, so routing by parameter
names as ``build`` does would be impossible there (mapping tensors back to names needs the
model, which the class never sees). Anything else in that slot is an optimizer *factory*
(``transformers.trainer_optimizer.is_optimizer_factory`` in 5.25, where this is tested): the
Trainer instantiates it without arguments and calls the instance with ``(model, **kwargs)``,
the model being the one it trains. ``TrainerFactory`` is such a factory: it hands the model
to ``orthoptim.build``, so the routing is exactly ``build``'s. Consequences:

- the Trainer's ``learning_rate``, ``weight_decay`` and Adam settings do not reach the
  optimizer (as for any ``optimizer_cls_and_kwargs``): pass ``lr=``, ``weight_decay=``,
  ``adamw_lr=`` ... here; the Trainer's lr scheduler multiplies each group's lr as usual;
- a Trainer that would call the factory the old way, with param groups, gets a ``TypeError``
  saying so, never an optimizer routed without names;
- the Trainer builds the optimizer before it wraps the model in DDP, so under ``torchrun`` each
  rank computes every matrix step on the all-reduced gradients (no work sharing, and
  ``optimizer.state_dict()`` on the main process alone, as the Trainer saves, is complete); an
  optimizer that reads layer inputs through hooks (``mkor``) is refused there, since each
  rank's hooks would see only its own batch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch.distributed as dist
from torch import nn

from orthoptim.integrations._unwrap import chain_optimizer
from orthoptim.nonfinite import NonFinitePolicy
from orthoptim.optim import ChainOptimizer
from orthoptim.registry import build, get
from orthoptim.routing import HEAD_NAMES
from orthoptim.telemetry import flat

__all__ = ["TrainerFactory", "optimizer_cls_and_kwargs"]  # and TelemetryCallback, made on use


class TrainerFactory:
    """What ``Trainer`` instantiates (without arguments) and calls with ``(model, **kwargs)``;
    ``optimizer_cls_and_kwargs`` makes the kwargs: ``name`` and ``build``'s keywords."""

    def __init__(self, *groups: Any, **options: Any) -> None:
        # A Trainer that treats this class as an optimizer class passes its unnamed param
        # groups here: routing them would be guesswork, so say what to do instead.
        if groups or options:
            raise TypeError(
                "this Trainer calls optimizer_cls_and_kwargs' class with param groups, which "
                "carry no parameter names to route by (transformers 5.25, where this is tested, "
                "calls it as a factory with the model); with this version use "
                "Trainer(..., optimizers=(orthoptim.build(name, model, ...), None))"
            )

    def __call__(self, model: nn.Module, name: str, **build_options: Any) -> ChainOptimizer:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"the Trainer handed {type(model).__name__} to the optimizer factory, not the "
                "model: routing by parameter names needs the nn.Module"
            )
        if get(name).needs_module and _world_size() > 1:
            # The Trainer hands over the bare model (it wraps it in DDP afterwards), which
            # build's own check cannot see as distributed.
            raise ValueError(
                f"{name} reads layer inputs through module hooks, and under the Trainer's "
                f"{_world_size()} processes each rank's hooks see only its own batch: the ranks' "
                "preconditioners, then their parameters, would drift apart. Train it in one "
                "process, or build another optimizer."
            )
        return build(name, model, **build_options)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def optimizer_cls_and_kwargs(
    name: str,
    lr: float | None = None,
    weight_decay: float | None = None,
    nonfinite: NonFinitePolicy = "raise",
    process_group: Any = None,
    fast_paths: bool = True,
    foreach: bool | None = None,
    capturable: bool = False,
    overrides: Mapping[str, str] | None = None,
    head_names: Sequence[str] = HEAD_NAMES,
    layouts: Mapping[str, str] | None = None,
    example_input: Any = None,
    from_adamw_lr: float | None = None,
    telemetry_every: int | None = None,
    **recipe_options: Any,
) -> tuple[type[TrainerFactory], dict[str, Any]]:
    """``Trainer(optimizer_cls_and_kwargs=...)`` building ``orthoptim.build(name, model, ...)``
    from the model the Trainer trains: the same routing, the same keywords as ``build``
    (``registry.build`` documents them; ``params_or_model`` is the Trainer's model).

    The name and the recipe options are checked here (``KeyError`` / ``TypeError``), not when
    ``trainer.train()`` starts. ``example_input`` is kept by reference in the kwargs.
    """
    get(name).whole_model_plan(recipe_options)
    kwargs: dict[str, Any] = {
        "name": name,
        "lr": lr,
        "weight_decay": weight_decay,
        "nonfinite": nonfinite,
        "process_group": process_group,
        "fast_paths": fast_paths,
        "foreach": foreach,
        "capturable": capturable,
        "overrides": overrides,
        "head_names": head_names,
        "layouts": layouts,
        "example_input": example_input,
        "from_adamw_lr": from_adamw_lr,
        "telemetry_every": telemetry_every,
        **recipe_options,
    }
    return TrainerFactory, kwargs


@functools.cache
def _telemetry_callback() -> type:
    """``TelemetryCallback``, defined on first use: subclassing ``TrainerCallback`` imports
    transformers, which ``import orthoptim.integrations.transformers`` does not."""
    from transformers import TrainerCallback

    class TelemetryCallback(TrainerCallback):
        """Logs ``opt.telemetry()`` (``orthoptim.telemetry``) with the Trainer's logs.

        At each of the Trainer's log events (``logging_steps``) after a step the optimizer
        measured (``build(..., telemetry_every=N)``; take ``N`` a multiple of
        ``logging_steps``, or equal), the figures join that log record as
        ``telemetry/{route}/{figure}`` and, with ``per_parameter``,
        ``telemetry/param/{name}/{figure}`` (``orthoptim.telemetry.flat``); a measurement
        is logged once. They land in ``state.log_history`` and reach every callback after
        this one in the Trainer's list. The reporting callbacks (TensorBoard, W&B, ...,
        ``report_to``) come first in that list when callbacks are passed to ``Trainer(...,
        callbacks=...)``: add this one with ``TelemetryCallback.add_to(trainer)``, which puts
        it before them, for them to log the figures too.
        """

        def __init__(self, per_parameter: bool = False) -> None:
            self.per_parameter = per_parameter
            self._logged: int | None = None

        def add_to(self, trainer: Any) -> TelemetryCallback:
            """Put this callback first in ``trainer``'s list, before the reporting ones."""
            trainer.callback_handler.callbacks.insert(0, self)
            return self

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            chain_optimizer(kwargs["optimizer"]).telemetry()  # ValueError when it is off

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            report = chain_optimizer(kwargs["optimizer"]).telemetry()
            if logs is None or report["step"] is None or report["step"] == self._logged:
                return
            self._logged = report["step"]
            tags = flat(report, per_parameter=self.per_parameter)
            logs.update(tags)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(tags)

    return TelemetryCallback


def __getattr__(name: str) -> Any:
    if name == "TelemetryCallback":
        return _telemetry_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
