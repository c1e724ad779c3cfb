"""Models, data and the per-rank functions of the distributed tests (module level: picklable)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from orthoptim.registry import build

STEPS = 3
WORLD = 2


class Tiny(nn.Module):
    """Every routing role, shard rows that split unevenly (13, 7) and a 1-row matrix whose
    second FSDP2 shard is empty."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc1 = nn.Linear(8, 13)
        self.fc2 = nn.Linear(13, 7)
        self.gate = nn.Linear(7, 1, bias=False)
        self.norm = nn.LayerNorm(7)
        self.head = nn.Linear(7, 16)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(self.emb(x)))))
        h = self.norm(h) * torch.sigmoid(self.gate(h))
        return self.head(h)


class Twins(nn.Module):
    """Two hidden matrices of one shape (``fc2``, ``fc3``): what ``batch_by_shape`` stacks."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 12)
        self.fc3 = nn.Linear(12, 12)
        self.head = nn.Linear(12, 16)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc1(self.emb(x)))
        return self.head(torch.tanh(self.fc3(torch.tanh(self.fc2(h)))))


def twins_batched(rank: int, mode: str) -> dict[str, Tensor]:
    """``muon`` with Newton-Schulz batched by shape on ``Twins`` under ``mode`` (rank 0's
    full parameters after STEPS steps), or in one process on the ranks' averaged gradients
    (``mode="single"``, any rank)."""
    torch.manual_seed(0)
    m: nn.Module = Twins()
    if mode == "single":
        opt = build("muon", m, batch_by_shape=True)
        for step in range(STEPS):
            reference_grads(m, step, 1)
            opt.step()
        return {n: p.detach().clone() for n, p in m.named_parameters()}
    if mode == "ddp":
        m = nn.parallel.DistributedDataParallel(m)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fully_shard(m, mesh=init_device_mesh("cpu", (WORLD,)))
    opt = build("muon", m, batch_by_shape=True)
    _train(m, opt, rank, range(STEPS), 1, mode)
    return _full(m)


def model(dtype: torch.dtype = torch.float32) -> Tiny:
    torch.manual_seed(0)
    return Tiny().to(dtype)


def batch(step: int, rank: int, micro: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    return torch.randint(0, 16, (6,), generator=g), torch.randint(0, 16, (6,), generator=g)


def loss(m: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
    x, y = b
    return nn.functional.cross_entropy(m(x).float(), y)


def reference_grads(m: nn.Module, step: int, micros: int) -> None:
    """``p.grad`` as data parallel makes it: (sum over ranks of each rank's accumulated
    micro-batch gradients) / world, summed in rank order."""
    per_rank = []
    for rank in range(WORLD):
        m.zero_grad(set_to_none=True)
        for micro in range(micros):
            loss(m, batch(step, rank, micro)).backward()
        per_rank.append([p.grad.clone() for p in m.parameters()])
    for p, *gs in zip(m.parameters(), *per_rank, strict=True):
        total = gs[0]
        for g in gs[1:]:
            total = total + g
        p.grad = total / WORLD


def reference(
    name: str, dtype: torch.dtype, steps: int = STEPS, micros: int = 1, fast_paths: bool = True
) -> dict[str, Tensor]:
    """The single-process run on the data-parallel gradients. ``fast_paths=False`` for FSDP2,
    whose shards run the eager chain (the fused AdamW kernel equals it only to round-off)."""
    m = model(dtype)
    opt = build(name, m, fast_paths=fast_paths)
    for step in range(steps):
        reference_grads(m, step, micros)
        opt.step()
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def induced_metric_per_tensor(rank: int, mode: str) -> dict[str, Tensor]:
    """``induced_metric(scope="parameter")`` for STEPS steps under ``mode`` (``"single"``: one
    process on the data-parallel gradients): each tensor's own metric runs on its owner."""
    if mode == "single":
        m = model()
        opt = build("induced_metric", m, scope="parameter", fast_paths=False)
        for step in range(STEPS):
            reference_grads(m, step, 1)
            opt.step()
        return {n: p.detach().clone() for n, p in m.named_parameters()}
    m = wrap(mode)
    opt = build("induced_metric", m, scope="parameter")
    _train(m, opt, rank, range(STEPS), 1, mode)
    return _full(m)


def matrix_names(name: str) -> set[str]:
    """Parameters whose route has a matrix transform (not bit-exact across batching)."""
    m = model()
    opt = build(name, m)
    out = set()
    for group in opt.param_groups:
        chain = opt.plan.route_named(group["route"]).chain
        if not chain.is_elementwise:
            out |= set(group["param_names"])
    return out


def _full(m: nn.Module) -> dict[str, Tensor]:
    from torch.distributed.tensor import DTensor

    out = {}
    for n, p in m.named_parameters():
        t = p.full_tensor() if isinstance(p, DTensor) else p
        out[n.removeprefix("module.")] = t.detach().clone()
    return out


def _train(m: nn.Module, opt: Any, rank: int, steps: range, micros: int, mode: str) -> None:
    for step in steps:
        for micro in range(micros):
            last = micro == micros - 1
            if mode == "fsdp":
                m.set_requires_gradient_sync(last)
                loss(m, batch(step, rank, micro)).backward()
            elif last:
                loss(m, batch(step, rank, micro)).backward()
            else:
                with m.no_sync():
                    loss(m, batch(step, rank, micro)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def wrap(mode: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    m = model(dtype)
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(m)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    fully_shard(m.fc1, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def run(rank: int, mode: str, names: list[str], dtype: torch.dtype, micros: int) -> dict[str, Any]:
    """Each optimizer for STEPS steps under ``mode``; rank 0 returns the full parameters."""
    out = {}
    for name in names:
        m = wrap(mode, dtype)
        opt = build(name, m)
        _train(m, opt, rank, range(STEPS), micros, mode)
        out[name] = _full(m)
    return out


def sent_bytes(rank: int, mode: str) -> int:
    m = wrap(mode)
    opt = build("muon", m)
    _train(m, opt, rank, range(1), 1, mode)
    return opt.distributed.sent_bytes


def describe(rank: int) -> str:
    return build("muon", wrap("ddp")).describe()


def _dcp_objects(mode: str, name: str) -> tuple[nn.Module, Any]:
    m = wrap(mode) if mode != "single" else model()
    return m, build(name, m)


def _save(m: nn.Module, opt: Any, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)


def _load(m: nn.Module, opt: Any, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(m, opt)
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=path)
    set_state_dict(m, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def dcp_save(rank: int, mode: str, name: str, path: str, steps: int) -> dict[str, Tensor]:
    """Train ``steps`` steps, save, train one more; the parameters after it."""
    m, opt = _dcp_objects(mode, name)
    _train(m, opt, rank, range(steps), 1, mode)
    _save(m, opt, path)
    _train(m, opt, rank, range(steps, steps + 1), 1, mode)
    return _full(m)


def dcp_resume(rank: int, mode: str, name: str, path: str, steps: int) -> dict[str, Tensor]:
    """Fresh model and optimizer, load, train step ``steps``; the parameters after it."""
    m, opt = _dcp_objects(mode, name)
    _load(m, opt, path)
    _train(m, opt, rank, range(steps, steps + 1), 1, mode)
    return _full(m)


def single_save(name: str, path: str, steps: int, fast_paths: bool) -> dict[str, Tensor]:
    """The single-process run with data parallel gradients: save after ``steps``, one more."""
    m = model()
    opt = build(name, m, fast_paths=fast_paths)
    for step in range(steps):
        reference_grads(m, step, 1)
        opt.step()
    _save(m, opt, path)
    reference_grads(m, steps, 1)
    opt.step()
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def single_resume(name: str, path: str, steps: int, fast_paths: bool) -> dict[str, Tensor]:
    m = model()
    opt = build(name, m, fast_paths=fast_paths)
    _load(m, opt, path)
    reference_grads(m, steps, 1)
    opt.step()
    return {n: p.detach().clone() for n, p in m.named_parameters()}


# -- consolidated (full) state dicts ------------------------------------------------------------
# Two forms: "set": ``get_state_dict(..., full_state_dict=True, cpu_offload=True)`` saved by rank
# 0 and restored with ``set_state_dict``; "load": ``opt.state_dict()`` (every rank under DDP)
# restored with ``opt.load_state_dict``, the model with its plain ``state_dict``.


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _unwrapped(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def _full_checkpoint(m: nn.Module, opt: Any, form: str) -> dict[str, Any]:
    if form == "set":
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(m, opt, options=_full_options())
        return {"model": msd, "optim": osd}
    return {"model": _unwrapped(m).state_dict(), "optim": opt.state_dict()}


def _restore_full(m: nn.Module, opt: Any, checkpoint: dict[str, Any], form: str) -> None:
    if form == "set":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            m,
            opt,
            model_state_dict=checkpoint["model"],
            optim_state_dict=checkpoint["optim"],
            options=StateDictOptions(full_state_dict=True),
        )
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(m, checkpoint["model"], options=StateDictOptions(full_state_dict=True))
    opt.load_state_dict(checkpoint["optim"])


def full_save(
    rank: int, mode: str, name: str, path: str, steps: int, form: str
) -> dict[str, Tensor]:
    """Train ``steps`` steps, save a consolidated checkpoint (rank 0 writes), train one more;
    the parameters after it."""
    m, opt = _dcp_objects(mode, name)
    _train(m, opt, rank, range(steps), 1, mode)
    checkpoint = _full_checkpoint(m, opt, form)
    if rank == 0:
        torch.save(checkpoint, path)
    dist.barrier()
    _train(m, opt, rank, range(steps, steps + 1), 1, mode)
    return _full(m)


def full_resume(
    rank: int, mode: str, name: str, path: str, steps: int, form: str
) -> dict[str, Tensor]:
    """Fresh model and optimizer, restore the consolidated checkpoint, train step ``steps``."""
    m, opt = _dcp_objects(mode, name)
    _restore_full(m, opt, torch.load(path, weights_only=False), form)
    _train(m, opt, rank, range(steps, steps + 1), 1, mode)
    return _full(m)


def single_full_save(
    name: str, path: str, steps: int, form: str, fast_paths: bool = True
) -> dict[str, Tensor]:
    """The single-process run on the data-parallel gradients, saving a consolidated checkpoint."""
    m = model()
    opt = build(name, m, fast_paths=fast_paths)
    for step in range(steps):
        reference_grads(m, step, 1)
        opt.step()
    torch.save(_full_checkpoint(m, opt, form), path)
    reference_grads(m, steps, 1)
    opt.step()
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def single_full_resume(
    name: str, path: str, steps: int, form: str, fast_paths: bool = True
) -> dict[str, Tensor]:
    m = model()
    opt = build(name, m, fast_paths=fast_paths)
    _restore_full(m, opt, torch.load(path, weights_only=False), form)
    reference_grads(m, steps, 1)
    opt.step()
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def saved_buffers(path: str) -> dict[str, set[str]]:
    """``{parameter: buffer keys}`` of a consolidated checkpoint (either form)."""
    optim = torch.load(path, weights_only=False)["optim"]
    names = {}
    for group in optim["param_groups"]:
        names.update(zip(group["params"], group.get("param_names") or group["params"], strict=True))
    return {str(names.get(k, k)).removeprefix("module."): set(v) for k, v in optim["state"].items()}


def writer_travels(rank: int, mode: str, path: str) -> dict[str, Any]:
    """A skipped step, the plan and the optimizer's name through DCP and through a consolidated
    state dict: the resumed optimizer's count, and the errors of loading into another plan."""
    import math

    m = wrap(mode)
    opt = build("muon", m, nonfinite="skip")
    _train(m, opt, rank, range(1), 1, mode)
    loss(m, batch(1, rank)).backward()
    if rank == 0:  # one rank's shard: every rank skips together
        from torch.distributed.tensor import DTensor

        grad = next(iter(m.parameters())).grad
        (grad.to_local() if isinstance(grad, DTensor) else grad).view(-1)[0] = math.nan
    opt.step()
    opt.zero_grad(set_to_none=True)
    _save(m, opt, path)
    checkpoint = _full_checkpoint(m, opt, "set")  # with cpu_offload, only rank 0 holds it
    if rank == 0:
        torch.save(checkpoint, path + ".pt")
    dist.barrier()
    full = torch.load(path + ".pt", weights_only=False)
    out: dict[str, Any] = {}
    fresh_m = wrap(mode)
    fresh = build("muon", fresh_m, nonfinite="skip")
    _load(fresh_m, fresh, path)
    out["dcp"] = fresh.skipped_steps
    fresh_m = wrap(mode)
    fresh = build("muon", fresh_m, nonfinite="skip")
    _restore_full(fresh_m, fresh, full, "set")
    out["full"] = fresh.skipped_steps
    for label, restore in (
        ("dcp_other", lambda o, mm: _load(mm, o, path)),
        ("full_other", lambda o, mm: _restore_full(mm, o, full, "set")),
    ):
        other_m = wrap(mode)
        other = build("muon", other_m, coeffs="polar_express_paper")  # same buffers
        try:
            restore(other, other_m)
            out[label] = ""
        except ValueError as err:
            out[label] = str(err)
    return out


def gather_misfit(rank: int, mode: str) -> str:
    """``state_dict()``'s error on every rank when an owner's buffer is not what its transform's
    init gives (here: NorMuon's ``v_row`` of the owner's matrices cut short)."""
    m = wrap(mode)
    opt = build("normuon", m)
    _train(m, opt, rank, range(1), 1, mode)
    for p, state in opt.state.items():
        if "normuon.v_row" in state and opt.distributed.owns(p):
            state["normuon.v_row"] = state["normuon.v_row"][:1]
    try:
        opt.state_dict()
    except ValueError as err:
        return str(err)
    return ""


def save_alone(rank: int, consolidate: bool) -> Any:
    """Under DDP, rank 0 alone calls ``state_dict()`` (HF Trainer's save): after
    ``consolidate_state_dict()`` on every rank, the buffer keys per parameter; without it, the
    error (the wait shortened to 3 s)."""
    from datetime import timedelta

    from orthoptim.distributed import engine

    engine.STATE_DICT_TIMEOUT = timedelta(seconds=3)
    m = wrap("ddp")
    opt = build("normuon", m)
    _train(m, opt, rank, range(1), 1, "ddp")
    if consolidate:
        opt.consolidate_state_dict()
    if rank != 0:
        return None
    try:
        state = opt.state_dict()["state"]
    except RuntimeError as err:
        return str(err)
    return {index: set(buffers) for index, buffers in state.items()}


def exact_mars_error(rank: int, mode: str) -> str:
    try:
        build("mars_adamw", wrap(mode), variant="exact")
    except ValueError as err:
        return str(err)
    return ""


def psgd_hvp_error(rank: int, mode: str) -> str:
    try:
        build("psgd_kron", wrap(mode), curvature="hvp")
    except ValueError as err:
        return str(err)
    return ""


def mfac_model_block_errors(rank: int, mode: str) -> list[str]:
    """The errors of M-FAC's model-wide block under a distributed step: through ``build``
    (the registry's check) and through ``ChainOptimizer`` directly."""
    from orthoptim.optim import ChainOptimizer
    from orthoptim.recipes.mfac import mfac

    out = []
    for make in (
        lambda: build("mfac", wrap(mode), blocks="model"),
        lambda: ChainOptimizer(wrap(mode), mfac(blocks="model"), lr=1e-2),
    ):
        try:
            make()
            out.append("")
        except ValueError as err:
            out.append(str(err))
    return out


def barrier(rank: int) -> int:
    dist.barrier()
    return rank


def errors(rank: int) -> dict[str, str]:
    """The message of each unsupported layout (``""`` if none was raised)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    out = {}

    def message(make: Any) -> str:
        try:
            build("muon", make())
        except ValueError as err:
            return str(err)
        return ""

    def hsdp() -> nn.Module:
        m = model()
        fully_shard(m, mesh=init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("rep", "shard")))
        return m

    def shard1() -> nn.Module:
        m = model()
        mesh = init_device_mesh("cpu", (WORLD,))
        for mod in (m.fc1, m.fc2, m.gate, m.head, m.emb, m.norm):
            for pname, p in list(mod.named_parameters(recurse=False)):
                placement = Shard(1) if p.ndim == 2 else Shard(0)
                t = distribute_tensor(p.detach(), mesh, [placement])
                setattr(mod, pname, nn.Parameter(t))
        return m

    def partial() -> nn.Module:
        m = model()
        fully_shard(m.fc1, mesh=init_device_mesh("cpu", (WORLD,)))
        return m

    def two_meshes() -> nn.Module:
        m = model()
        fully_shard(m.fc1, mesh=init_device_mesh("cpu", (WORLD,), mesh_dim_names=("a",)))
        fully_shard(m, mesh=init_device_mesh("cpu", (WORLD,), mesh_dim_names=("b",)))
        return m

    for name, make in [
        ("hsdp", hsdp),
        ("shard1", shard1),
        ("partial", partial),
        ("meshes", two_meshes),
    ]:
        out[name] = message(make)
    try:
        build("muon_nalr", wrap("ddp"))
        out["single_process_only"] = ""
    except ValueError as err:
        out["single_process_only"] = str(err)
    return out


def nonfinite(rank: int, mode: str) -> str:
    """A NaN in rank 1's shard only: every rank must raise, none may hang."""
    from orthoptim.nonfinite import NonFiniteGradientError

    m = wrap(mode)
    opt = build("muon", m)
    loss(m, batch(0, rank)).backward()
    if rank == 1:
        g = getattr(m, "module", m).fc2.weight.grad
        (g.to_local() if hasattr(g, "to_local") else g).view(-1)[0] = float("nan")
    try:
        opt.step()
    except NonFiniteGradientError as err:
        return str(err)
    return ""


def local_values(t: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor

    return (t.to_local() if isinstance(t, DTensor) else t).detach().clone()


def scaler_found_inf(rank: int, mode: str) -> dict[str, Any]:
    """``GradScaler`` finds an inf in rank 1's gradients only (its FSDP2 shard): every rank
    must skip the step together, parameters and state untouched, and a clean step after it
    must update every rank."""
    m = wrap(mode)
    opt = build("muon", m)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(loss(m, batch(0, rank))).backward()
    scaler.step(opt)
    scaler.update()
    before = [local_values(p) for p in m.parameters()]
    state = [{k: local_values(v) for k, v in st.items()} for st in opt.state.values()]
    opt.zero_grad()
    scaler.scale(loss(m, batch(1, rank))).backward()
    if rank == 1:
        g = getattr(m, "module", m).fc2.weight.grad
        (g.to_local() if hasattr(g, "to_local") else g).view(-1)[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    unchanged = all(
        torch.equal(a, local_values(p)) for a, p in zip(before, m.parameters(), strict=True)
    ) and all(
        torch.equal(v, local_values(st[k]))
        for old, st in zip(state, opt.state.values(), strict=True)
        for k, v in old.items()
    )
    opt.zero_grad()
    scaler.scale(loss(m, batch(2, rank))).backward()
    scaler.step(opt)
    moved = any(
        not torch.equal(a, local_values(p)) for a, p in zip(before, m.parameters(), strict=True)
    )
    return {"unchanged": unchanged, "skipped": opt.skipped_steps, "moved": moved}


def state_keys(rank: int, mode: str, name: str) -> dict[str, list[str]]:
    m = wrap(mode)
    opt = build(name, m)
    _train(m, opt, rank, range(1), 1, mode)
    names = {id(p): n for n, p in m.named_parameters()}
    return {names[id(p)]: sorted(s) for p, s in opt.state.items()}


def mixed_precision(rank: int) -> dict[str, Tensor]:
    """FSDP2 with a bf16 MixedPrecisionPolicy (fp32 sharded parameters)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    m = model()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mesh = init_device_mesh("cpu", (WORLD,))
    fully_shard(m.fc1, mesh=mesh, mp_policy=policy)
    fully_shard(m, mesh=mesh, mp_policy=policy)
    opt = build("muon", m)
    _train(m, opt, rank, range(STEPS), 1, "fsdp")
    return _full(m)


def single_only_message(rank: int, name: str) -> str:
    """The error building a single-process-only optimizer on a DDP model raises."""
    try:
        build(name, wrap("ddp"))
    except ValueError as err:
        return str(err)
    return ""


def replicated_state(rank: int, name: str) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """DDP with ``replicate_state=True``: the parameters after STEPS steps and the state keys."""
    from orthoptim.optim import ChainOptimizer
    from orthoptim.registry import get

    spec = get(name)
    m = wrap("ddp")
    opt = ChainOptimizer(
        m,
        spec.whole_model_plan(),
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        replicate_state=True,
    )
    _train(m, opt, rank, range(STEPS), 1, "ddp")
    names = {id(p): n for n, p in m.named_parameters()}
    return _full(m), {names[id(p)]: sorted(s) for p, s in opt.state.items()}


def frugal_switch(rank: int, mode: str, path: str) -> dict[str, Any]:
    """FRUGAL's blocks with periods of 2 steps over ``Tiny``'s 3 hidden matrices (one
    state-full at a time): 5 steps straight, and 3 steps saved (DCP, and a consolidated
    ``opt.state_dict()`` under DDP), loaded into a fresh model and optimizer and trained to 5.
    Also this rank's moment elements after 3 steps: the state-full matrix's on its owner only."""
    options = {"update_every": 2}
    m = wrap(mode)
    opt = build("frugal", m, **options)
    _train(m, opt, rank, range(5), 1, mode)
    out: dict[str, Any] = {"straight": _full(m)}
    m = wrap(mode)
    opt = build("frugal", m, **options)
    _train(m, opt, rank, range(3), 1, mode)
    out["moments"] = sum(
        t.numel() for s in opt.state.values() for k, t in s.items() if k.startswith("lowrank.")
    )
    _save(m, opt, path)
    full = opt.state_dict() if mode == "ddp" else None
    resumed = wrap(mode)
    resumed_opt = build("frugal", resumed, **options)
    _load(resumed, resumed_opt, path)
    _train(resumed, resumed_opt, rank, range(3, 5), 1, mode)
    out["dcp"] = _full(resumed)
    if full is not None:
        resumed = wrap(mode)
        resumed.module.load_state_dict(_unwrapped(m).state_dict())
        resumed_opt = build("frugal", resumed, **options)
        resumed_opt.load_state_dict(full)
        _train(resumed, resumed_opt, rank, range(3, 5), 1, mode)
        out["full"] = _full(resumed)
    return out


def state_bytes(rank: int, names: list[str]) -> dict[str, int]:
    """Per optimizer, the bytes of this rank's state after one DDP step."""
    out = {}
    for name in names:
        m = wrap("ddp")
        opt = build(name, m)
        _train(m, opt, rank, range(1), 1, "ddp")
        out[name] = sum(t.nbytes for s in opt.state.values() for t in s.values())
    return out
