"""What ``ChainOptimizer.state_dict`` adds to torch's and what ``load_state_dict`` checks and
restores: who wrote a checkpoint, whether it fits these parameters, and the buffers torch's
loading would change (dtypes, FSDP2 shards, Python-number steps, other ranks' buffers)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from orthoptim.distributed import DistributedStep
from orthoptim.groups import names_of
from orthoptim.recipes.plan import Plan, group_layout

PLAN_STATE_KEY = "orthoptim_plan"
"""The top-level plan entry of checkpoints written before the group entries below (still read;
their skipped-step count sat at the top level under ``SKIPPED_STATE_KEY``)."""
CHAIN_KEY = "orthoptim_chain"
OPTIMIZER_KEY = "orthoptim_optimizer"
SKIPPED_STATE_KEY = "orthoptim_skipped_steps"
SAVED_ONLY_KEYS: tuple[str, ...] = (CHAIN_KEY, OPTIMIZER_KEY, SKIPPED_STATE_KEY)
"""Entries ``state_dict`` writes into each saved group (DCP and ``get_state_dict`` keep only
``state`` and ``param_groups``): what wrote the checkpoint, dropped again on load."""
LEGACY_KEYS: tuple[str, ...] = (PLAN_STATE_KEY, SKIPPED_STATE_KEY)
"""Top-level entries of older checkpoints that torch's ``load_state_dict`` does not know."""

Expected = dict[Any, tuple[Tensor, dict[str, Tensor], dict[str, Tensor], set[str], set[str]]]
"""Per saved parameter index with state: the parameter, the (meta) buffers a fresh init
creates, the same at their held size (``TransformBase.held``), the keys this rank keeps, and
those it keeps as FSDP2 shards."""


def add_gathered(
    state: dict[str, Any],
    param_groups: Sequence[Mapping[str, Any]],
    gathered: Mapping[int, Mapping[str, Tensor]],
) -> None:
    """Put the buffers other ranks own (``{id(p): buffers}``) into torch's ``state``."""
    order = [id(p) for group in param_groups for p in group["params"]]
    for index, pid in enumerate(order):
        if pid in gathered:  # a new dict: torch's entries are the live state's own
            state["state"][index] = {**state["state"][index], **gathered[pid]}


def fill_released(
    state: dict[str, Any], param_groups: Sequence[Mapping[str, Any]], plan: Plan
) -> None:
    """Put into torch's ``state`` each released buffer (``TransformBase.held``: an empty
    tensor standing for zeros of its held size) as those zeros.

    So every checkpoint has one layout, whichever tensors were state-full when it was written:
    DCP loads in place into a fresh optimizer's state dict, whose buffers have that fresh
    step's shapes, and refuses other sizes; ``restore`` releases them again. The zeros are
    allocated while the returned dict lives: saving costs the held size's memory."""
    index = -1
    for group in param_groups:
        for p in group["params"]:
            index += 1
            saved = state["state"].get(index)
            released = [
                k
                for k, v in (saved or {}).items()
                if k != "step" and isinstance(v, Tensor) and v.numel() == 0
            ]
            if not released:
                continue
            meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
            held = plan.held(group["route"], meta, group_layout(group))
            filled = {
                k: saved[k].new_zeros(held[k].shape)
                for k in released
                if k in held and held[k].numel()
            }
            if filled:  # a new dict: torch's entries are the live state's own
                state["state"][index] = {**saved, **filled}


def sign(
    state: dict[str, Any],
    param_groups: Sequence[Mapping[str, Any]],
    plan: Plan,
    name: str | None,
    skipped_steps: int,
) -> None:
    """Write into each saved group what wrote the checkpoint: the route's chain ``repr``, the
    registry name and the count of skipped steps."""
    for saved, group in zip(state["param_groups"], param_groups, strict=True):
        saved[CHAIN_KEY] = repr(plan.route_named(group["route"]).chain)
        saved[OPTIMIZER_KEY] = name
        saved[SKIPPED_STATE_KEY] = skipped_steps


def check_writer(
    state_dict: Mapping[str, Any],
    param_groups: Sequence[Mapping[str, Any]],
    plan: Plan,
    name: str | None,
) -> None:
    """``ValueError`` unless ``state_dict`` was written by this optimizer and plan."""
    saved_groups = state_dict["param_groups"]
    names = {g.get(OPTIMIZER_KEY) for g in saved_groups} - {None}
    if name is not None and names and names != {name}:
        raise ValueError(
            f"state dict was saved by a different optimizer: {', '.join(sorted(names))}, "
            f"this is {name}"
        )
    mine = {r.name: repr(r.chain) for r in plan.routes}
    saved = state_dict.get(PLAN_STATE_KEY)  # checkpoints written before the group entries
    if saved is None and any(CHAIN_KEY in g for g in saved_groups):
        saved = {g["route"]: g[CHAIN_KEY] for g in saved_groups}
        mine = {g["route"]: mine[g["route"]] for g in param_groups}
    if saved is not None and saved != mine:
        raise ValueError(
            f"state dict was saved by a different optimizer:\n  saved: {saved}\n  this: {mine}"
        )


def expected_buffers(
    state_dict: Mapping[str, Any],
    param_groups: Sequence[Mapping[str, Any]],
    plan: Plan,
    distributed: DistributedStep | None,
) -> Expected:
    """``Expected`` for each saved parameter with state; ``ValueError`` where the groups differ
    or the saved buffers are neither all of a fresh init's (a complete state dict) nor this
    rank's own."""
    out: Expected = {}
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"state dict has {len(saved_groups)} param groups, this optimizer {len(param_groups)}"
        )
    for saved, group in zip(saved_groups, param_groups, strict=True):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"state dict group {group.get('role') or group['route']!r} has "
                f"{len(saved['params'])} parameters, this optimizer {len(group['params'])}"
            )
        chain = plan.route_named(group["route"]).chain
        for index, name, p in zip(saved["params"], names_of(group), group["params"], strict=True):
            buffers = state_dict["state"].get(index)
            if not buffers:
                continue
            # Meta tensors: the buffers a fresh init would create, without allocating them, and
            # their in-use sizes (a buffer a transform releases is saved at either).
            meta = torch.empty(p.shape, dtype=p.dtype, device="meta")
            fresh = plan.init(group["route"], meta, group_layout(group))
            held = plan.held(group["route"], meta, group_layout(group))
            keys = None if distributed is None else distributed.local_keys(chain, p)
            kept = set(fresh) if keys is None else keys
            found = {k: tuple(v.shape) for k, v in buffers.items() if k != "step"}
            complete = {k: tuple(v.shape) for k, v in fresh.items()}
            fits = all(
                shape in (complete[k], tuple(held[k].shape))
                for k, shape in found.items()
                if k in complete
            )
            if not fits or set(found) not in (set(complete), set(complete) & kept):
                expected = {
                    k: v if v == tuple(held[k].shape) else f"{v} or {tuple(held[k].shape)}"
                    for k, v in complete.items()
                }
                raise ValueError(
                    f"state dict does not fit parameter {name or index} of shape "
                    f"{tuple(p.shape)}: saved buffers {found}, expected {expected}"
                )
            sharded = set() if distributed is None else distributed.shard_keys(chain, p)
            out[index] = (p, fresh, held, kept, sharded)
    return out


def restore(
    state: MutableMapping[Tensor, dict[str, Any]],
    param_groups: Sequence[dict[str, Any]],
    state_dict: Mapping[str, Any],
    expected: Expected,
) -> int:
    """After torch's ``load_state_dict``: drop the saved-only group entries and the buffers
    another rank owns, restore what torch's loading changed, and return the skipped steps."""
    for group in param_groups:  # what the checkpoint says about itself, not settings
        for key in SAVED_ONLY_KEYS:
            group.pop(key, None)
    for index, (p, fresh, held, kept, sharded) in expected.items():
        buffers = state[p]
        for key in [k for k in buffers if k != "step" and k not in kept]:
            del buffers[key]  # another rank owns it
        for key in kept:
            if fresh[key].shape != held[key].shape and not buffers[key].any():
                # zeros a transform may release (written by fill_released, or moments that
                # are zero): released, they stand for the same zeros and take no memory
                buffers[key] = torch.zeros(0, dtype=fresh[key].dtype, device=buffers[key].device)
                continue
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
                shard = cast(DTensor, p)  # its keys are sharded: an FSDP2 parameter
                buffers[key] = distribute_tensor(
                    buffers[key], shard.device_mesh, shard.placements, src_data_rank=None
                )
    # torch's own optimizers accept a Python number as ``step`` (older and hand-edited
    # checkpoints) and torch loads it as it is; the step reads it as the float32 0-d tensor
    # the shell creates, so turn it into one.
    for buffers in state.values():
        step = buffers.get("step")
        if step is not None and not isinstance(step, Tensor):
            buffers["step"] = torch.tensor(float(step), dtype=torch.float32)
    groups = state_dict["param_groups"]
    skipped = groups[0].get(SKIPPED_STATE_KEY) if groups else None
    return int(state_dict.get(SKIPPED_STATE_KEY, 0) if skipped is None else skipped)
