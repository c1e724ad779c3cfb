"""Glue for the trainers users already run. Each submodule imports its trainer library only
when used, so ``import orthoptim`` still needs only torch.

- ``orthoptim.integrations.transformers``: ``optimizer_cls_and_kwargs`` for the Hugging Face
  ``Trainer``, and its ``TelemetryCallback`` (``opt.telemetry()`` in the Trainer's logs).
- ``orthoptim.integrations.lightning``: ``TelemetryCallback``, ``opt.telemetry()`` to a
  Lightning trainer's loggers.

Accelerate and Lightning need no glue: ``accelerator.prepare(model, orthoptim.build(...))`` and
a ``configure_optimizers`` returning ``orthoptim.build(name, self)`` work as they are
(``docs/integrations.md``).
"""
