"""``ChainOptimizer``: the one ``torch.optim.Optimizer`` subclass; it runs any chain or plan.

The shell reads like torch's optimizers; what it delegates lives beside it: param groups and
their checks (``groups``), the non-finite policy (``nonfinite``), the second gradient of exact
MARS (``previous_point``), the Hessian-vector products of PSGD's ``curvature="hvp"`` (``hvp``),
what checkpoints carry and how they load (``checkpoint``), and the
distributed step (``distributed``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from orthoptim import amp, checkpoint
from orthoptim._checks import (
    check_bool,
    check_choice,
    check_finite_nonnegative,
    check_optional_bool,
)
from orthoptim._types import ParamsLike
from orthoptim.distributed import DistributedStep, detect
from orthoptim.eager import GroupStep, Recorder, run_chain, run_route
from orthoptim.fused import FusedAdamW
from orthoptim.groups import (
    configure,
    describe,
    initial_groups,
    normalized,
    number,
    route_of,
    route_positions,
    with_grads,
)
from orthoptim.hvp import check_closure, hessian_vector_products, raise_for_products
from orthoptim.nonfinite import NONFINITE_POLICIES, NonFinitePolicy, raise_for, step_is_finite
from orthoptim.oracle import check_estimator_closure, estimate_gradients
from orthoptim.previous_point import grads_at_previous_points
from orthoptim.recipes.plan import (
    LR_SCALE_KEY,
    Plan,
    exposed_moments,
    group_layout,
    group_lr,
    live_chain,
    moment_key,
)
from orthoptim.routing import HEAD_NAMES
from orthoptim.telemetry import Probe, Telemetry, check_every
from orthoptim.transforms.chain import Chain

_HOST = torch.device("cpu")


class ChainOptimizer(torch.optim.Optimizer):
    """Runs a chain (or a plan of chains) as a drop-in ``torch.optim.Optimizer``.

    Each step, per param group: the group's chain turns a working copy of each gradient into an
    update ``u`` (the gradient itself is never written), one parameter at a time, or
    transform-major over the group's parameters (transform 1 over all of them, then transform
    2, ...) when a transform works on the group together; the shell applies
    ``theta <- theta - lr * lr_scale * u``, with the chain's trailing shape scale and decoupled
    decay folded into it (``theta (1 - lr lambda) - lr s u``, as torch's AdamW and Muon; equal
    to separate passes to round-off; ``Chain.fold_from``). ``lr``, ``lr_scale`` and
    ``weight_decay`` live in the param groups, so torch LR schedulers, per-group overrides and
    ``state_dict`` work as usual.

    Learning rates of a plan: every group's ``lr`` is the optimizer's lr, which schedulers
    set, and ``lr_scale`` is its route's lr relative to it (``Route.lr_scale``, or
    ``Route.lr`` over the optimizer's initial lr), so schedulers that set absolute values
    (``OneCycleLR``, ``CyclicLR``, ``CosineAnnealingLR(eta_min=...)``) keep the routes' relation.
    A param group given with its own ``lr`` and no ``lr_scale`` runs at exactly that lr.

    Args:
        params: an ``nn.Module`` (every parameter is classified into a role and routed by the
            plan), tensors, ``(name, tensor)`` pairs, or param-group dicts. Groups may carry
            ``"role"`` (routed by the plan) or ``"route"`` (a route name), and ``lr`` /
            ``weight_decay``.
        recipe: a ``Chain`` (applied to every parameter) or a ``Plan``.
        lr: learning rate of the plan's first route; other routes run relative to it.
        weight_decay: weight decay for routes that do not set their own.
        overrides: ``{glob: role}`` routing overrides (with an ``nn.Module`` or named
            parameters; ``routing.classify``).
        head_names: module names that mark the output layer (``routing.HEAD_NAMES``).
        layouts: ``{glob: layout}`` corrections of ``routing.layouts`` (how a weight stores its
            matrix; the matrix transforms see it in ``(out, in)`` order).
        example_input: what ``model(...)`` takes: routing by one traced forward
            (``model_trace``) instead of by names.
        reroutes: ``{parameter name: reason}``: parameters their role's route cannot update,
            sent to the route for vectors with the reason as the group's ``note``.
        name: the registry name (``build`` sets it): saved in state dicts and checked on load.
        nonfinite: what a step does when any gradient holds NaN or Inf, or a value whose square
            overflows (``|g| > 1.8e19`` in float32 and 16-bit, where second moments, norms and
            Kronecker factors would become Inf). ``"raise"``: raise
            ``NonFiniteGradientError`` naming the parameter, with parameters and state untouched.
            ``"skip"``: skip the whole step (every group) and count it in ``skipped_steps``,
            which ``state_dict`` saves. The check is one pass over each gradient and
            one host read. ``"off"``: no check, torch.optim's behaviour: a NaN or Inf reaches
            the parameters and the state. Under ``torch.amp.GradScaler`` the scaler's check
            replaces this one (``orthoptim.amp``): a step it finds non-finite is skipped and
            counted, whatever the policy, and the gradients are unscaled once, inside the
            fused AdamW kernel where a route runs it.
        process_group: share the matrix steps of replicated parameters over this group's ranks
            (plain data parallel); a ``DistributedDataParallel`` model uses its own group, and
            FSDP2 (DTensor) parameters their mesh's. ``None`` without either: every rank
            computes every step, as in one process. See ``orthoptim.distributed``.
        replicate_state: with replicated parameters, keep the state of every matrix chain's
            element-wise prefix (Muon's momentum) on every rank, each rank computing it, instead
            of on the owner only (ZeRO-1); the matrix core's own buffers stay on the owner.
        fast_paths: where a route's whole chain is a computation a torch kernel does in one pass
            (``adamw()``: torch's fused AdamW, ``orthoptim.fused``), run that kernel instead of
            the transforms; equal to round-off, pinned by tests. ``False``: always the chain.
        capturable: keep every step counter on its parameter's device and give it to the
            transforms as a tensor, and take a tensor ``lr`` as it is, so that a step reads
            nothing on the host and a captured or compiled step (``torch.compile(opt.step,
            fullgraph=True)``, CUDA graphs) does not freeze the step count or the lr, as
            torch.optim's ``capturable``. Pass ``lr`` as a tensor for a scheduler to move it
            without recompiling, and ``nonfinite="off"`` for a graph without breaks (the check
            reads one flag per step). Every transform of the plan must be capturable
            (``TransformBase.capturable``: those of ``sgd``, ``adamw``, ``muon``,
            ``muon_polar``, ``adamp`` and ``sgdp`` are), else ``ValueError``; one process
            only. Equal to the default step within float32 round-off of the bias corrections
            (``tests/optim/test_capturable.py``).
        telemetry_every: measure every N-th step's figures (update RMS, update / parameter
            norm ratio, gradient norm, effective lr, and the Newton-Schulz output's health on
            orthogonalized routes), which ``telemetry()`` returns (``orthoptim.telemetry``).
            ``None`` or 0 (default): off, the step unchanged. Not with ``capturable`` nor
            distributed (``ValueError``).
        foreach: multi-tensor kernels (``torch._foreach_*``) over a param group where a step
            can use them, instead of one kernel per parameter: the non-finite check, and each
            chain's element-wise transforms before and after its matrix core (the core one
            parameter at a time, or batched by shape where a transform ``batches``: Muon's
            Newton-Schulz) and the final update (``eager.run_foreach``), equal to the
            one-at-a-time path (bit for bit on CPU, tested; batched Newton-Schulz to its
            kernels' rounding) at the cost of the group's working copies alive at once instead
            of one. ``None`` (default) chooses per device, as torch.optim does: on for GPUs and
            other accelerators, where each kernel launch costs microseconds (a Muon step
            launches 0.22x torch's Muon + foreach AdamW kernels with it,
            benchmarks/records/2026-12-06_op-counts), off on the CPU, where the per-parameter
            form measured faster and keeps one working copy alive.

    Attributes:
        distributed: the ``DistributedStep`` sharing out the matrix steps, ``None`` in a single
            process.
        positions: ``{id(p): (position, route size)}`` (``groups.route_positions``), what the
            transforms see as ``Ctx.position`` and ``Ctx.route_size``.
    """

    _step_supports_amp_scaling = True  # GradScaler.step: see orthoptim.amp

    def __init__(
        self,
        params: ParamsLike,
        recipe: Chain | Plan,
        *,
        lr: float,
        weight_decay: float = 0.0,
        overrides: Mapping[str, str] | None = None,
        head_names: Sequence[str] = HEAD_NAMES,
        layouts: Mapping[str, str] | None = None,
        example_input: Any = None,
        reroutes: Mapping[str, str] | None = None,
        name: str | None = None,
        nonfinite: NonFinitePolicy = "raise",
        process_group: Any = None,
        fast_paths: bool = True,
        replicate_state: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        telemetry_every: int | None = None,
    ) -> None:
        check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        every = check_every(telemetry_every)
        self._telemetry = Telemetry(every) if every else None
        check_bool("fast_paths", fast_paths)
        check_optional_bool("foreach", foreach)
        self.foreach = foreach
        check_bool("capturable", capturable)
        self.capturable = capturable
        check_bool("replicate_state", replicate_state)
        self.nonfinite = nonfinite
        self.fast_paths = fast_paths
        self.name = name
        self._skipped, self._skipped_on_device = 0, cast(Tensor | None, None)
        self._gathered: dict[int, dict[str, Tensor]] | None = None
        check_finite_nonnegative("lr", number(lr))
        check_finite_nonnegative("weight_decay", weight_decay)
        if isinstance(recipe, Chain):
            recipe = Plan.single(recipe)
        if not isinstance(recipe, Plan):
            raise TypeError(f"recipe must be a Chain or a Plan, got {type(recipe).__name__}")
        self.plan = recipe
        groups = initial_groups(
            params,
            recipe,
            lr=lr,
            weight_decay=weight_decay,
            overrides=overrides,
            head_names=head_names,
            layouts=layouts,
            example_input=example_input,
            reroutes=reroutes,
        )
        defaults: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
        main = recipe.routes[0].chain
        self.moment_key = moment_key(main)
        if self.moment_key is not None:  # torch's schedulers look for it in the defaults
            defaults[self.moment_key] = exposed_moments(main, self.moment_key)
        super().__init__(groups, defaults)
        self.positions = route_positions(self.param_groups)
        self.distributed: DistributedStep | None = detect(
            params, self.param_groups, self.plan, process_group, replicate_state, self.positions
        )
        if capturable:
            _check_capturable(recipe, self.distributed)
        if self._telemetry is not None and (capturable or self.distributed is not None):
            raise ValueError(
                "telemetry_every measures a step from snapshots of the parameters taken in this "
                "process, which neither a captured (capturable=True) nor a distributed step "
                "allows: turn telemetry off there (telemetry_every=None)"
            )
        if self.distributed is not None and recipe.needs_hvp:
            raise ValueError(
                "a transform of this plan reads Hessian-vector products (psgd_kron "
                "curvature='hvp'), which the distributed step does not evaluate: use "
                "curvature='whitening' or 'finite_difference' under DDP or FSDP2, or train in "
                "one process"
            )
        estimator = recipe.estimator
        if self.distributed is not None and estimator is not None:
            raise ValueError(
                f"this plan estimates its gradients with {type(estimator).__name__} (more "
                "closure() calls per step, at parameters each rank would move on its own), "
                "which the distributed step does not evaluate: train it in one process"
            )
        if self.distributed is not None and recipe.needs_closure:
            raise ValueError(
                "a transform of this plan needs the gradient at the previous parameters (MARS "
                "variant='exact', one extra closure() per step), which the distributed step "
                "does not evaluate: use MARS variant='approximate' under DDP or FSDP2, or train "
                "in one process"
            )
        if self.distributed is not None and recipe.route_wide:
            raise ValueError(
                "a transform of this plan needs all of its route's parameters in one step "
                "(blocks='model' of mfac or psgd_lra: one window or preconditioner over the whole "
                "model), and under DDP or FSDP2 each "
                "owner rank holds only its own: use blocks='parameter', or train in one process"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Check and route ``param_group``, then let torch add it; nothing changes on error."""
        group = normalized(param_group, self.param_groups)
        configure(group, route_of(self.plan, group), self.defaults, self.moment_key)
        super().add_param_group(group)
        if not hasattr(self, "positions"):  # torch's __init__ adding the initial groups
            return
        self.positions = route_positions(self.param_groups)
        if self.distributed is not None:
            self.distributed.positions = self.positions
            self.distributed.assign(self.param_groups[-1:])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()``'s loss."""
        self._gathered = None  # what consolidate_state_dict gathered describes the last step
        grad_scale, found_inf = amp.scaler_inputs(self)
        loss = None
        check_closure(self.param_groups, self.plan, closure)
        estimator = self.plan.estimator
        if estimator is not None:
            check_estimator_closure(estimator, closure)
        at_previous = grads_at_previous_points(
            self.state, self.param_groups, self.plan, closure, self.nonfinite
        )
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        commit = None
        if estimator is not None and closure is not None:
            commit = estimate_gradients(
                estimator, self.state, self.param_groups, closure, loss, self._fresh_state
            )
        skipped = self._skipped
        hvps = (
            hessian_vector_products(self.state, self.param_groups, self.plan)
            if self.plan.needs_hvp
            else {}
        )
        work = [(group, with_grads(group)) for group in self.param_groups]
        probe = None
        if self._telemetry is not None:
            probe = self._telemetry.begin(self.param_groups, self.plan, self.positions)
        self._apply(work, at_previous, hvps, grad_scale, found_inf, probe)
        if probe is not None and self._telemetry is not None:
            self._telemetry.finish(probe)
        if commit is not None and self._skipped == skipped:  # the step was applied
            commit()
        return loss

    def _apply(
        self,
        work: list[tuple[dict[str, Any], list[tuple[str, Tensor]]]],
        at_previous: Mapping[Tensor, Tensor],
        hvps: Mapping[Tensor, tuple[Tensor, Tensor]],
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        probe: Probe | None = None,
    ) -> None:
        """``step`` after the closure: check, then update every group (``probe``: a measured
        step's, whose ``record`` the transforms report to)."""
        record = None if probe is None else probe.record
        grads = [cast(Tensor, p.grad) for _, params in work for _, p in params]
        extra = [*at_previous.values(), *(h for _, h in hvps.values())]
        grads += extra  # "skip" skips a step with non-finite ones too
        if found_inf is not None and self.distributed is None and self._all_fused(work):
            # every kernel takes found_inf and skips on the device: no host read
            self._skipped_on_device = found_inf.float() + (
                0.0 if self._skipped_on_device is None else self._skipped_on_device
            )
            for group, params in work:
                if params:
                    self._step_group(group, params, None, grad_scale, found_inf, record=record)
            return
        if not self._usable(grads, found_inf):
            if self.nonfinite == "skip" or found_inf is not None:
                self.skipped_steps += 1
                return
            if hvps:  # never under DDP/FSDP2 (refused), whose sharded gradients it cannot read
                raise_for_products(self.param_groups, hvps)
            raise_for(work)
        amp.unscale_(extra, grad_scale)
        if self.distributed is not None:
            amp.unscale_(grads[: len(grads) - len(extra)], grad_scale)
            self.distributed.step(self.state, work, at_previous, self._step_group)
            return
        together: dict[str, list[tuple[dict[str, Any], list[tuple[str, Tensor]]]]] = {}
        for group, params in work:
            if not params:
                continue
            if self.plan.route_named(group["route"]).chain.route_wide:
                together.setdefault(group["route"], []).append((group, params))
            else:
                self._step_group(group, params, at_previous, grad_scale, hvps=hvps, record=record)
        for groups in together.values():
            self._step_route(groups, at_previous, grad_scale, hvps, record)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for non-finite gradients (``nonfinite="skip"``, or a ``GradScaler``'s
        finding), saved by ``state_dict``. Reading it reads the device count of the steps the
        fused kernel skipped without a host read, if any."""
        if self._skipped_on_device is not None:
            self._skipped += int(self._skipped_on_device.item())
            self._skipped_on_device = None
        return self._skipped

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped, self._skipped_on_device = value, None

    def _multi_tensor(self, grads: Sequence[Tensor]) -> bool:
        """``foreach``, or where ``None``, whether the gradients live off the CPU."""
        if self.foreach is not None:
            return self.foreach
        return bool(grads) and grads[0].device.type != "cpu"

    def _all_fused(
        self, work: Sequence[tuple[Mapping[str, Any], list[tuple[str, Tensor]]]]
    ) -> bool:
        """Whether every group with gradients runs the fused AdamW kernel, which can skip a
        step on the device."""
        for group, params in work:
            if not params:
                continue
            chain = self.plan.route_named(group["route"]).chain
            fused = self._fused(chain)
            if fused is None or not all(fused.fits(p, self.state[p]) for _, p in params):
                return False
        return True

    def _usable(self, grads: list[Tensor], found_inf: Tensor | None) -> bool:
        """Whether the step may write: the scaler's finding where a ``GradScaler`` steps this
        optimizer (it checked every gradient already, and its finding is agreed across ranks:
        FSDP2 ranks check different shards), else the non-finite policy's check."""
        if found_inf is None and self.nonfinite == "off":
            return True
        return step_is_finite(grads, self.distributed, self._multi_tensor(grads), found_inf)

    def _step_group(
        self,
        group: Mapping[str, Any],
        params: list[tuple[str, Tensor]],
        at_previous: Mapping[Tensor, Tensor] | None = None,
        grad_scale: Tensor | None = None,
        found_inf: Tensor | None = None,
        hvps: Mapping[Tensor, tuple[Tensor, Tensor]] | None = None,
        record: Recorder | None = None,
    ) -> None:
        chain = live_chain(self.plan.route_named(group["route"]).chain, group)
        lr, weight_decay = self._lr(group), float(group["weight_decay"])
        layout = group_layout(group)
        fused = self._fused(chain)
        multi_tensor = self._multi_tensor([cast(Tensor, p.grad) for _, p in params])
        states = self._counted_states(params, chain, layout, fused)
        tensors = [p for _, p in params]
        if fused is not None and fused.supports(tensors, states):
            fused.step(tensors, states, lr, weight_decay, grad_scale, found_inf)
            return
        amp.unscale_([cast(Tensor, p.grad) for p in tensors], grad_scale)
        run_chain(
            chain,
            params,
            states,
            lr,
            weight_decay,
            layout,
            at_previous,
            self.capturable,
            multi_tensor,
            self.positions,
            hvps,
            record,
        )

    def _counted_states(
        self,
        params: list[tuple[str, Tensor]],
        chain: Chain,
        layout: str,
        fused: FusedAdamW | None,
    ) -> list[dict[str, Tensor]]:
        """The states of ``params`` (created by ``chain`` on a parameter's first step), their
        step counters already counting this step."""
        states = []
        counters: dict[torch.device, list[Tensor]] = {}
        for _, p in params:
            state = self.state[p]
            # the step counter lives where its reader is: on the host for the transforms'
            # Python arithmetic (no device sync, as in torch.optim), on the device for the
            # fused kernel
            on_device = self.capturable or (fused is not None and fused.takes(p))
            home = p.device if on_device else _HOST
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=home)
                state.update(chain.init(p, layout) | self.plan.estimator_init(p))
            elif state["step"].device != home:  # loaded or moved elsewhere
                state["step"] = state["step"].to(home, torch.float32)
            counters.setdefault(home, []).append(state["step"])
            states.append(state)
        for steps in counters.values():
            torch._foreach_add_(steps, 1.0)
        return states

    def _fresh_state(self, group: Mapping[str, Any], p: Tensor) -> dict[str, Tensor]:
        """A parameter's state before its first step, for a gradient estimator that reads
        its buffers before the routes step (``_counted_states`` moves the counter where its
        reader needs it)."""
        step = torch.zeros((), dtype=torch.float32, device=_HOST)
        return {"step": step, **self.plan.init(group["route"], p, group_layout(group))}

    def _step_route(
        self,
        groups: list[tuple[dict[str, Any], list[tuple[str, Tensor]]]],
        at_previous: Mapping[Tensor, Tensor] | None,
        grad_scale: Tensor | None,
        hvps: Mapping[Tensor, tuple[Tensor, Tensor]] | None = None,
        record: Recorder | None = None,
    ) -> None:
        """One step of a route whose chain is ``route_wide``, all its groups at once
        (``eager.run_route``); never fused nor capturable (``_check_capturable``)."""
        parts = []
        for group, params in groups:
            chain = live_chain(self.plan.route_named(group["route"]).chain, group)
            layout = group_layout(group)
            states = self._counted_states(params, chain, layout, None)
            amp.unscale_([cast(Tensor, p.grad) for _, p in params], grad_scale)
            lr = cast(float, self._lr(group))
            parts.append(GroupStep(chain, params, states, lr, float(group["weight_decay"]), layout))
        run_route(parts, at_previous, self.positions, hvps, record)

    def _fused(self, chain: Chain) -> FusedAdamW | None:
        """The fused kernel computing ``chain`` where ``fast_paths`` allow it; not under
        ``capturable``, which compiles (the kernel has no compile support; inductor fuses the
        chain's element-wise passes itself)."""
        return None if not self.fast_paths or self.capturable else FusedAdamW.of(chain)

    def _lr(self, group: Mapping[str, Any]) -> float | Tensor:
        """The group's lr (``group_lr``); under ``capturable``, a tensor ``lr`` stays one."""
        lr, scale = group["lr"], float(group.get(LR_SCALE_KEY, 1.0))
        if self.capturable and isinstance(lr, Tensor):
            return lr if scale == 1.0 else lr * scale
        return group_lr(group)

    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and ``pickle`` keep: every attribute but torch's hook dicts.

        torch's own ``__getstate__`` keeps only ``defaults``, ``state`` and ``param_groups``,
        which would lose the plan and everything else ``__init__`` sets; its ``__setstate__``
        re-creates the hook dicts empty (registered hooks belong to the original, as in torch).
        A distributed optimizer cannot be copied: its ``DistributedStep`` holds a process group
        and the owners of this process's parameters.
        """
        if self.__dict__.get("distributed") is not None:
            raise TypeError(
                "a distributed ChainOptimizer cannot be deep-copied or pickled: its "
                "DistributedStep holds a process group and the owners of this process's "
                "parameters; save state_dict() and load it into an optimizer built on the copy"
            )
        return {
            k: v
            for k, v in self.__dict__.items()
            if not (k.startswith("_optimizer_") and k.endswith("_hooks"))
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's (re-creates the hook dicts, patches ``step``; ``load_state_dict`` calls it
        too), leaving ``defaults`` as they were: torch adds ``differentiable`` to them, which
        ``add_param_group`` would then copy into every new group. ``positions`` are recomputed:
        they are keyed by the tensors' ids, and a copy's tensors are new."""
        state.setdefault("_telemetry", self.__dict__.get("_telemetry"))  # older pickles: off
        defaults = state.get("defaults", self.__dict__.get("defaults", {}))
        had_differentiable = "differentiable" in defaults
        super().__setstate__(state)
        if not had_differentiable:
            self.defaults.pop("differentiable", None)
        if "positions" in self.__dict__:  # keyed by id(p): a copy holds other tensors
            self.positions = route_positions(self.param_groups)
            distributed = self.__dict__.get("distributed")
            if distributed is not None:
                distributed.positions = self.positions

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, complete on every rank, and in each saved group what the
        checkpoint was written by: the route's chain ``repr`` (options included; checked on
        load), the optimizer's registry name and the count of skipped steps. Group entries
        travel through ``get_state_dict`` / DCP and consolidated (full) state dicts alike.

        Distributed, every buffer of every parameter is in every rank's state dict, whichever
        rank owns it (``DistributedStep.consolidated``, a collective: call it on every rank, as
        ``get_state_dict`` does), so a checkpoint loads at any world size; FSDP2's element-wise
        buffers stay DTensor shards for ``get_state_dict`` to gather or DCP to write in place.
        To save from one rank only, call ``consolidate_state_dict()`` on every rank first.

        A buffer its transform releases while unused (``TransformBase.held``: FRUGAL's moments
        of a state-free tensor) is saved as the zeros it stands for, at its in-use size, so a
        checkpoint's shapes do not depend on the step (DCP loads in place and needs them);
        those zeros are allocated for as long as the returned dict lives, and released again
        on load.
        """
        state = super().state_dict()
        if self.distributed is not None:
            gathered = self._gathered
            if gathered is None:
                gathered = self.distributed.consolidated(self.state, self.param_groups)
            checkpoint.add_gathered(state, self.param_groups, gathered)
        checkpoint.fill_released(state, self.param_groups, self.plan)
        checkpoint.sign(state, self.param_groups, self.plan, self.name, self.skipped_steps)
        return state

    def consolidate_state_dict(self) -> None:
        """Gather on every rank the buffers other ranks own (a collective: call it on every
        rank), so that a ``state_dict()`` on one rank alone, as HF Trainer and many scripts
        save under DDP, is complete without communication. Valid until the next ``step()``
        (torch's ``ZeroRedundancyOptimizer`` has the same call); nothing to do in one process.
        """
        if self.distributed is not None:
            self._gathered = self.distributed.consolidated(self.state, self.param_groups)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by the same optimizer on the same parameter shapes, at any
        world size: a complete (consolidated) one, or one rank's own (DCP's sharded form).

        ``ValueError`` if it was saved by a different optimizer or plan (registry name, route
        names or chains differ), or if a saved buffer's shape differs from the one this
        optimizer would create for the parameter it maps to (a different model); torch itself
        only compares the number of parameters per group.
        """
        checkpoint.check_writer(state_dict, self.param_groups, self.plan, self.name)
        self._gathered = None
        expected = checkpoint.expected_buffers(
            state_dict, self.param_groups, self.plan, self.distributed
        )
        super().load_state_dict(
            {k: v for k, v in state_dict.items() if k not in checkpoint.LEGACY_KEYS}
        )
        self.skipped_steps = checkpoint.restore(self.state, self.param_groups, state_dict, expected)
        if self._telemetry is not None:  # measure the steps the saved run would have measured
            counts = [int(s["step"].max().item()) for s in self.state.values() if "step" in s]
            self._telemetry.restart_at(max(counts, default=0) + self.skipped_steps)

    def telemetry(self) -> dict[str, Any]:
        """The figures of the last measured step (``telemetry_every``; ``orthoptim.telemetry``
        defines them): ``{"step": n, "routes": {route: {figure: value}}, "params": {name:
        {figure: value}}}``, ``step`` being the ``step()`` call measured (``None`` and empty
        mappings before the first). The figures stay on the device during the step; this call
        reads them to the host, once per measured step (one device sync), so call it where a
        logger would (every N steps), not inside a captured region. Parameters passed without
        names appear as ``route[position]``. ``ValueError`` when telemetry is off."""
        if self._telemetry is None:
            raise ValueError(
                "telemetry is off: build the optimizer with telemetry_every=N to measure every "
                "N-th step (orthoptim.build(name, model, telemetry_every=100))"
            )
        return self._telemetry.read()

    def explain(self) -> str:
        """The update rule of every route, one line per transform (``Plan.explain``)."""
        return self.plan.explain()

    def describe(self) -> str:
        """The routing table: each parameter's role, route, chain, the lr its step uses now
        (its group's scheduled lr times ``lr_scale``) and weight decay."""
        owners = None if self.distributed is None else self.distributed.owners
        return describe(self.param_groups, self.plan, owners)


def _check_capturable(plan: Plan, distributed: DistributedStep | None) -> None:
    """``ValueError`` unless every transform of ``plan`` is capturable, in one process."""
    blocking = sorted(
        {type(t).__name__ for r in plan.routes for t in r.chain.transforms if not t.capturable}
    )
    if blocking:
        raise ValueError(
            "capturable=True needs every transform to take the step count as a device tensor; "
            f"these do not: {', '.join(blocking)} (capturable: sgd, adamw, muon, muon_polar, "
            "adamp, sgdp)"
        )
    if plan.estimator is not None:
        raise ValueError(
            f"capturable=True runs a step without host reads; {type(plan.estimator).__name__} "
            "re-evaluates the closure in Python: use capturable=False"
        )
    if distributed is not None:
        raise ValueError("capturable=True runs in one process; the distributed step is not")
