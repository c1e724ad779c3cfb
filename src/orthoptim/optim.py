"""``ChainOptimizer``: the one ``torch.optim.Optimizer`` subclass; it runs any chain or plan."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from orthoptim._checks import check_bool, check_choice, check_finite_nonnegative, check_positive
from orthoptim._types import ParamsLike
from orthoptim.distributed import DistributedStep, detect
from orthoptim.functional.layout import DEFAULT_LAYOUT, check_layout
from orthoptim.fused import FusedAdamW
from orthoptim.nonfinite import (
    NONFINITE_POLICIES,
    NonFiniteGradientError,
    NonFinitePolicy,
    all_finite,
    raise_for,
    step_is_finite,
)
from orthoptim.recipes.plan import (
    LAYOUT_KEY,
    LR_SCALE_KEY,
    MOMENT_KEYS,
    Plan,
    Route,
    exposed_moments,
    group_layout,
    group_lr,
    live_chain,
    moment_key,
)
from orthoptim.routing import (
    HEAD_NAMES,
    NOTE_KEY,
    describe,
    is_named_parameters,
    param_groups,
    route_named,
)
from orthoptim.routing import route as route_model
from orthoptim.transforms.base import Chain, Ctx, explain

GROUP_KEYS: frozenset[str] = frozenset(
    {
        "params",
        "param_names",
        "lr",
        LR_SCALE_KEY,
        LAYOUT_KEY,
        "weight_decay",
        "role",
        "route",
        "initial_lr",
        NOTE_KEY,
        *MOMENT_KEYS,
    }
)
PLAN_STATE_KEY = "orthoptim_plan"
"""The top-level plan entry of checkpoints written before the group entries below (still read;
their skipped-step count sat at the top level under ``SKIPPED_STATE_KEY``)."""
CHAIN_KEY = "orthoptim_chain"
OPTIMIZER_KEY = "orthoptim_optimizer"
SKIPPED_STATE_KEY = "orthoptim_skipped_steps"
SAVED_ONLY_KEYS: tuple[str, ...] = (CHAIN_KEY, OPTIMIZER_KEY, SKIPPED_STATE_KEY)
"""Entries ``state_dict`` writes into each saved group (DCP and ``get_state_dict`` keep only
``state`` and ``param_groups``): what wrote the checkpoint, dropped again on load."""


def _number(value: float | Tensor) -> float:
    """A hyperparameter given as a number or a one-element tensor (torch accepts both)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"lr must be a number or a one-element tensor, got {value.shape}")
        return float(value.item())
    return value


def _names(group: Mapping[str, Any]) -> list[str]:
    """The group's parameter names, "" for each when it was built from bare tensors."""
    return group.get("param_names") or [""] * len(group["params"])


class _Scratch:
    """One flat buffer per device and dtype, as large as the largest of ``grads``, holding the
    working copy of one gradient at a time (non-contiguous gradients get their own clone, which
    keeps their memory format)."""

    def __init__(self, grads: list[Tensor]) -> None:
        self._sizes: dict[tuple[torch.device, torch.dtype], int] = {}
        for g in grads:
            key = (g.device, g.dtype)
            self._sizes[key] = max(self._sizes.get(key, 0), g.numel())
        self._buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def copy_of(self, grad: Tensor) -> Tensor:
        if not grad.is_contiguous():
            return grad.clone(memory_format=torch.preserve_format)
        key = (grad.device, grad.dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(
                self._sizes[key], dtype=grad.dtype, device=grad.device
            )
        return buffer[: grad.numel()].view(grad.shape).copy_(grad)


class ChainOptimizer(torch.optim.Optimizer):
    """Runs a chain (or a plan of chains) as a drop-in ``torch.optim.Optimizer``.

    Each step, per param group: the group's chain turns a working copy of each gradient into an
    update ``u`` (the gradient itself is never written), one parameter at a time, or
    transform-major over the group's parameters (transform 1 over all of them, then transform
    2, ...) when a transform works on the group together; the shell applies
    ``theta <- theta - lr * lr_scale * u``. ``lr``, ``lr_scale`` and ``weight_decay`` live in
    the param groups, so torch LR schedulers, per-group overrides and ``state_dict`` work as usual.

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
            which ``state_dict`` saves. The check is one min/max pass over each gradient.
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

    Attributes:
        distributed: the ``DistributedStep`` sharing out the matrix steps, ``None`` in a single
            process.
    """

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
    ) -> None:
        check_choice("nonfinite", nonfinite, NONFINITE_POLICIES)
        check_bool("fast_paths", fast_paths)
        check_bool("replicate_state", replicate_state)
        self.nonfinite = nonfinite
        self.fast_paths = fast_paths
        self.name = name
        self.skipped_steps = 0
        self._gathered: dict[int, dict[str, Tensor]] | None = None
        check_finite_nonnegative("lr", _number(lr))
        check_finite_nonnegative("weight_decay", weight_decay)
        if isinstance(recipe, Chain):
            recipe = Plan.single(recipe)
        if not isinstance(recipe, Plan):
            raise TypeError(f"recipe must be a Chain or a Plan, got {type(recipe).__name__}")
        self.plan = recipe
        items = params if isinstance(params, nn.Module) else list(cast(Iterable[Any], params))
        routing, named_params = None, []
        if isinstance(items, nn.Module):
            routing = route_model(items, overrides, head_names, layouts, example_input)
            named_params = list(items.named_parameters())
        elif is_named_parameters(items) and recipe.needs_roles:
            if example_input is not None:
                raise ValueError("example_input traces a forward and needs the nn.Module")
            named_params = cast(list[tuple[str, Tensor]], items)
            routing = route_named(named_params, overrides, head_names, layouts)
        else:
            given = [
                k for k, v in (("overrides", overrides), ("layouts", layouts)) if v is not None
            ] + (["example_input"] if example_input is not None else [])
            if given:
                raise ValueError(
                    f"{', '.join(given)} route parameters of a model: pass the nn.Module "
                    "(or model.named_parameters() for overrides and layouts)"
                )
        if routing is None:
            groups = items if not items or isinstance(items[0], dict) else [{"params": items}]
        else:
            groups = param_groups(
                named_params,
                routing.roles,
                recipe,
                lr=lr,
                weight_decay=weight_decay,
                layouts=routing.layouts,
                reroutes=reroutes,
            )
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        defaults: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
        main = recipe.routes[0].chain
        self.moment_key = moment_key(main)
        if self.moment_key is not None:  # torch's schedulers look for it in the defaults
            defaults[self.moment_key] = exposed_moments(main, self.moment_key)
        super().__init__(groups, defaults)
        self.distributed: DistributedStep | None = detect(
            params, self.param_groups, self.plan, process_group, replicate_state
        )
        if self.distributed is not None and recipe.needs_closure:
            raise ValueError(
                "a transform of this plan needs the gradient at the previous parameters (MARS "
                "variant='exact', one extra closure() per step), which the distributed step "
                "does not evaluate: use MARS variant='approximate' under DDP or FSDP2, or train "
                "in one process"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Check and route ``param_group``, then let torch add it; nothing changes on error."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        unknown = set(param_group) - GROUP_KEYS
        if unknown:
            raise ValueError(
                f"unknown param group keys {sorted(unknown)}; allowed: {sorted(GROUP_KEYS)}"
            )
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, set):
            raise TypeError("params must be an ordered collection (a list), not a set")
        params = [params] if isinstance(params, Tensor) else list(params)
        if any(isinstance(x, tuple) for x in params):
            if not is_named_parameters(params):
                raise TypeError(
                    "params must be all tensors or all (name, tensor) pairs, as "
                    "model.named_parameters() gives"
                )
            group["param_names"] = [name for name, _ in params]
            params = [p for _, p in params]
        group["params"] = params
        if len({id(p) for p in params}) != len(params):
            first = {id(p): i for i, p in reversed(list(enumerate(params)))}
            twice = next(i for i, p in enumerate(params) if first[id(p)] != i)
            raise ValueError(
                f"parameter {_names(group)[twice] or f'#{twice}'} appears twice in one param "
                "group: its update would be applied twice"
            )
        if self.param_groups:  # torch wants every group with names, or none
            if "param_names" in self.param_groups[0]:
                group.setdefault("param_names", [""] * len(params))
            else:
                group.pop("param_names", None)
        route = self._route_of(group)
        group["route"] = route.name
        group.setdefault("role", None)
        if "lr" in group:
            group.setdefault(LR_SCALE_KEY, 1.0)  # the user's lr is this group's lr
        else:
            group["lr"] = self.defaults["lr"]
            group.setdefault(LR_SCALE_KEY, route.scale_at(self.defaults["lr"]))
        if route.weight_decay is not None:
            group.setdefault("weight_decay", route.weight_decay)
        if self.moment_key is not None and route.chain.moments:  # set before torch's __init__
            group.setdefault(self.moment_key, exposed_moments(route.chain, self.moment_key))
        check_finite_nonnegative("lr", _number(group["lr"]))
        check_positive(LR_SCALE_KEY, group[LR_SCALE_KEY])
        layout = group_layout(group)
        check_finite_nonnegative("weight_decay", group.get("weight_decay", 0.0))
        for name, p in zip(_names(group), params, strict=True):
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize tensors, got {type(p).__name__}")
            if not p.is_floating_point():
                raise TypeError(
                    f"parameter {name or '<unnamed>'} has dtype {p.dtype}; orthoptim optimizes "
                    "real floating-point tensors"
                )
            if p.ndim >= 2 or layout != DEFAULT_LAYOUT:
                check_layout(layout, tuple(p.shape), name)
            route.chain.validate(p, name)
        super().add_param_group(group)
        if getattr(self, "distributed", None) is not None:
            cast(DistributedStep, self.distributed).assign(self.param_groups[-1:])

    def _route_of(self, group: Mapping[str, Any]) -> Route:
        if "route" in group:
            try:
                return self.plan.route_named(group["route"])
            except KeyError as err:
                raise ValueError(str(err)) from None
        if group.get("role") is not None:
            return self.plan.route_for(group["role"])
        if self.plan.needs_roles:
            raise ValueError(
                f"this plan routes by role ({', '.join(r.name for r in self.plan.routes)}) and "
                "cannot route bare tensors: pass the nn.Module, or param groups with a 'role' key "
                "(hidden, embedding, head, vector)"
            )
        return self.plan.routes[0]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns ``closure()``'s loss."""
        self._gathered = None  # what consolidate_state_dict gathered describes the last step
        loss = None
        at_previous = self._grads_at_previous_points(closure)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [(group, self._with_grads(group)) for group in self.param_groups]
        grads = [cast(Tensor, p.grad) for _, params in work for _, p in params]
        grads += at_previous.values()  # "skip" skips a step with non-finite ones too
        if not step_is_finite(grads, self.distributed):
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return loss
            raise_for(work)
        if self.distributed is not None:
            self.distributed.step(self.state, work, at_previous, self._step_group)
            return loss
        for group, params in work:
            if params:
                self._step_group(group, params, at_previous)
        return loss

    def _grads_at_previous_points(self, closure: Callable[[], Any] | None) -> dict[Tensor, Tensor]:
        """The gradients at the previous parameter values on the current batch, for the routes
        whose chain has a transform with ``needs_closure`` (exact MARS): one extra ``closure()``
        with those parameters set to the transform's ``previous_point`` buffer, restored after
        (also on error). ``ValueError`` without a closure, before anything changes; the closure
        must zero the gradients itself (as for torch.optim.LBFGS)."""
        points: list[tuple[str, Tensor, Tensor]] = []
        for group in self.param_groups:
            key = self.plan.route_named(group["route"]).chain.previous_point
            if key is None:
                continue
            if closure is None:
                raise ValueError(
                    f"route {group['route']!r} needs the gradient at the previous parameters "
                    f"({key.split('.')[0]}, e.g. MARS variant='exact'): call step(closure) "
                    "with a closure that zeroes the gradients, computes the loss and calls "
                    "backward()"
                )
            for name, p in zip(_names(group), group["params"], strict=True):
                if key in self.state.get(p, {}):
                    points.append((name, p, self.state[p][key]))
        if not points or closure is None:
            return {}
        current = [p.detach().clone() for _, p, _ in points]
        try:
            for _, p, previous in points:
                p.copy_(previous)
            with torch.enable_grad():
                closure()
            at_previous = {
                p: torch.zeros_like(p) if p.grad is None else p.grad.clone() for _, p, _ in points
            }
        finally:
            for (_, p, _), value in zip(points, current, strict=True):
                p.copy_(value)
        if self.nonfinite == "raise" and not all_finite(list(at_previous.values())):
            name = next(
                n or "<unnamed>" for n, p, _ in points if not at_previous[p].isfinite().all()
            )
            raise NonFiniteGradientError(
                f"gradient of parameter {name} at its previous value holds NaN, Inf, or a value "
                "whose square overflows; nothing was updated (pass nonfinite='skip' to skip such "
                "steps instead)"
            )
        return at_previous

    def _with_grads(self, group: Mapping[str, Any]) -> list[tuple[str, Tensor]]:
        """The group's (name, parameter) pairs that have a gradient, checked before any update."""
        out = []
        for name, p in zip(_names(group), group["params"], strict=True):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"parameter {name or '<unnamed>'}: sparse gradients unsupported")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise RuntimeError(
                    f"parameter {name or '<unnamed>'}: gradient {tuple(g.shape)} {g.dtype} does "
                    f"not match the parameter {tuple(p.shape)} {p.dtype}"
                )
            out.append((name, p))
        return out

    def _step_group(
        self,
        group: Mapping[str, Any],
        params: list[tuple[str, Tensor]],
        at_previous: Mapping[Tensor, Tensor] | None = None,
    ) -> None:
        chain = live_chain(self.plan.route_named(group["route"]).chain, group)
        lr, weight_decay = group_lr(group), float(group["weight_decay"])
        layout = group_layout(group)
        states = []
        for _, p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state.update(chain.init(p, layout))
            state["step"] += 1
            states.append(state)
        tensors = [p for _, p in params]
        fused = FusedAdamW.of(chain) if self.fast_paths else None
        if fused is not None and fused.supports(tensors, states):
            fused.step(tensors, states, lr, weight_decay)
            return
        ctxs = [
            Ctx(
                int(state["step"].item()),
                lr,
                weight_decay,
                p,
                cast(Tensor, p.grad),
                name,
                None if at_previous is None else at_previous.get(p),
                layout,
            )
            for (name, p), state in zip(params, states, strict=True)
        ]
        if chain.groupwise:
            updates = [c.grad.clone(memory_format=torch.preserve_format) for c in ctxs]
            updates = chain.apply_many(updates, states, ctxs)
            for p, u in zip(tensors, updates, strict=True):
                p.add_(u, alpha=-lr)
            return
        # One parameter at a time, from the gradient's working copy to the update: one working
        # copy is alive at once instead of one per parameter (the Muon step's transient peak on
        # the 24 default matrices, benchmarks/records/2026-11-25_step-speed-2), and the copies
        # share one buffer instead of a fresh full-size tensor per parameter, whose allocation
        # and first touch cost 1-10% of a Muon step (benchmarks/records/2026-11-25_step-speed-3).
        scratch = _Scratch([c.grad for c in ctxs])
        for p, state, c in zip(tensors, states, ctxs, strict=True):
            p.add_(chain.apply(scratch.copy_of(c.grad), state, c), alpha=-lr)

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
        ``add_param_group`` would then copy into every new group."""
        defaults = state.get("defaults", self.__dict__.get("defaults", {}))
        had_differentiable = "differentiable" in defaults
        super().__setstate__(state)
        if not had_differentiable:
            self.defaults.pop("differentiable", None)

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
        """
        state = super().state_dict()
        if self.distributed is not None:
            gathered = self._gathered
            if gathered is None:
                gathered = self.distributed.consolidated(self.state, self.param_groups)
            order = [id(p) for group in self.param_groups for p in group["params"]]
            for index, pid in enumerate(order):
                if pid in gathered:  # a new dict: torch's entries are the live state's own
                    state["state"][index] = {**state["state"][index], **gathered[pid]}
        for saved, group in zip(state["param_groups"], self.param_groups, strict=True):
            saved[CHAIN_KEY] = repr(self.plan.route_named(group["route"]).chain)
            saved[OPTIMIZER_KEY] = self.name
            saved[SKIPPED_STATE_KEY] = self.skipped_steps
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
        self._check_writer(state_dict)
        self._gathered = None
        expected = self._expected_buffers(state_dict)
        legacy = (PLAN_STATE_KEY, SKIPPED_STATE_KEY)  # top-level entries torch does not know
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in legacy})
        for group in self.param_groups:  # what the checkpoint says about itself, not settings
            for key in SAVED_ONLY_KEYS:
                group.pop(key, None)
        for index, (p, fresh, kept, sharded) in expected.items():
            buffers = self.state[p]
            for key in [k for k in buffers if k != "step" and k not in kept]:
                del buffers[key]  # another rank owns it
            for key in kept:
                # torch casts every floating buffer to its parameter's dtype; a transform may
                # keep a buffer in another dtype (ScaleByAdam keeps float32 moments for 16-bit
                # parameters), so restore those from the saved tensors, bit for bit.
                if buffers[key].dtype != fresh[key].dtype:
                    saved = state_dict["state"][index][key]
                    buffers[key] = saved.to(
                        device=buffers[key].device, dtype=fresh[key].dtype, copy=True
                    )
                if key in sharded and not isinstance(buffers[key], DTensor):
                    # a consolidated checkpoint's full buffer: this rank's FSDP2 shard of it
                    buffers[key] = distribute_tensor(
                        buffers[key], p.device_mesh, p.placements, src_data_rank=None
                    )
        # torch's own optimizers accept a Python number as ``step`` (older and hand-edited
        # checkpoints) and torch loads it as it is; the step reads it as the float32 0-d tensor
        # ``_step_group`` creates, so turn it into one.
        for buffers in self.state.values():
            step = buffers.get("step")
            if step is not None and not isinstance(step, Tensor):
                buffers["step"] = torch.tensor(float(step), dtype=torch.float32)
        groups = state_dict["param_groups"]
        skipped = groups[0].get(SKIPPED_STATE_KEY) if groups else None
        self.skipped_steps = int(
            state_dict.get(SKIPPED_STATE_KEY, 0) if skipped is None else skipped
        )

    def _check_writer(self, state_dict: Mapping[str, Any]) -> None:
        """``ValueError`` unless ``state_dict`` was written by this optimizer and plan."""
        saved_groups = state_dict["param_groups"]
        names = {g.get(OPTIMIZER_KEY) for g in saved_groups} - {None}
        if self.name is not None and names and names != {self.name}:
            raise ValueError(
                f"state dict was saved by a different optimizer: {', '.join(sorted(names))}, "
                f"this is {self.name}"
            )
        mine = {r.name: repr(r.chain) for r in self.plan.routes}
        saved = state_dict.get(PLAN_STATE_KEY)  # checkpoints written before the group entries
        if saved is None and any(CHAIN_KEY in g for g in saved_groups):
            saved = {g["route"]: g[CHAIN_KEY] for g in saved_groups}
            mine = {g["route"]: mine[g["route"]] for g in self.param_groups}
        if saved is not None and saved != mine:
            raise ValueError(
                f"state dict was saved by a different optimizer:\n  saved: {saved}\n  this: {mine}"
            )

    def _expected_buffers(
        self, state_dict: Mapping[str, Any]
    ) -> dict[Any, tuple[Tensor, dict[str, Tensor], set[str], set[str]]]:
        """For each saved parameter index with state: its parameter here, the (meta) buffers a
        fresh init would create, the keys this rank keeps, and those it keeps as FSDP2 shards
        (element-wise buffers of a DTensor parameter); ``ValueError`` where the saved buffers
        are neither all of them (a complete state dict) nor this rank's own."""
        out = {}
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state dict has {len(saved_groups)} param groups, this optimizer "
                f"{len(self.param_groups)}"
            )
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"state dict group {group.get('role') or group['route']!r} has "
                    f"{len(saved['params'])} parameters, this optimizer {len(group['params'])}"
                )
            chain = self.plan.route_named(group["route"]).chain
            for index, name, p in zip(saved["params"], _names(group), group["params"], strict=True):
                buffers = state_dict["state"].get(index)
                if not buffers:
                    continue
                # Meta tensors: the buffers a fresh init would create, without allocating them.
                fresh = chain.init(
                    torch.empty(p.shape, dtype=p.dtype, device="meta"), group_layout(group)
                )
                keys = None if self.distributed is None else self.distributed.local_keys(chain, p)
                kept = set(fresh) if keys is None else keys
                found = {k: tuple(v.shape) for k, v in buffers.items() if k != "step"}
                complete = {k: tuple(v.shape) for k, v in fresh.items()}
                own = {k: v for k, v in complete.items() if k in kept}
                if found not in (complete, own):
                    raise ValueError(
                        f"state dict does not fit parameter {name or index} of shape "
                        f"{tuple(p.shape)}: saved buffers {found}, expected {complete}"
                    )
                sharded = (
                    set() if self.distributed is None else self.distributed.shard_keys(chain, p)
                )
                out[index] = (p, fresh, kept, sharded)
        return out

    def explain(self) -> str:
        """The update rule of every route, one line per transform."""
        blocks = []
        for route in self.plan.routes:
            wd = "optimizer's" if route.weight_decay is None else f"{route.weight_decay:g}"
            header = (
                f"route {route.name} ({', '.join(route.roles)}): {route.describe_lr()}, "
                f"weight decay {wd}"
            )
            body = "\n".join("  " + line for line in explain(route.chain).splitlines())
            blocks.append(f"{header}\n{body}")
        return "\n".join(blocks)

    def describe(self) -> str:
        """The routing table: each parameter's role, route, chain, the lr its step uses now
        (its group's scheduled lr times ``lr_scale``) and weight decay."""
        owners = None if self.distributed is None else self.distributed.owners
        return describe(self.param_groups, self.plan, owners)
