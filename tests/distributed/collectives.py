"""Where the distributed step's collectives get their tensors: a spy for a CPU-only machine.

On a CPU run every tensor is on the CPU, so asserting "each tensor handed to a collective is on
the parameters' device" cannot fail here, while the same code may hand a CPU tensor to NCCL on a
GPU run (issue 17: a device-less ``torch.tensor([...])`` flag fails the first NCCL step). The spy
therefore follows where tensors come from, not where they are:

- a ``TorchFunctionMode`` marks every tensor made by a factory (``torch.tensor``, ``zeros``,
  ``empty``, ``full``, ...) without a ``device=`` (or with a literal ``"cpu"``), and what is
  derived from one: CPU on a GPU run. An explicit device (``device=p.device``, ``.to(device)``)
  clears the mark; ``*_like`` and ``new_*`` inherit their input's device. A 0-d marked tensor
  combined with an unmarked one does not mark the result (CUDA treats a CPU scalar as a number).
- a ``TorchDispatchMode`` sees every ``c10d`` / ``_c10d_functional`` op, whichever Python name
  called it (``dist.all_reduce``, an alias bound at import, DTensor internals, barriers), and
  checks each tensor argument: not marked, on the parameters' device, and that device's type
  served by the group's backend (``served``).
- the object collectives (``broadcast_object_list``, ``all_gather_object``, ...) are replaced
  for the duration: they pickle through tensors on the current device, a host round trip, and
  have no place in the step or the state-dict path.

Limits: a marked tensor wrapped into a DTensor by ``DTensor.from_local`` loses its mark (an
autograd function, not a torch function); a ``torch.device("cpu")`` object passed as ``device=``
counts as derived (only the string form is recognised as a literal).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from orthoptim.optim import ChainOptimizer
from orthoptim.registry import build, get
from tests.distributed import workers as W

FACTORIES = frozenset(
    {
        torch.tensor,
        torch.as_tensor,
        torch.scalar_tensor,
        torch.zeros,
        torch.ones,
        torch.empty,
        torch.empty_strided,
        torch.full,
        torch.arange,
        torch.linspace,
        torch.logspace,
        torch.eye,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.frombuffer,
    }
)
"""Factories whose result is on the default device (the CPU) unless given ``device=``."""

OBJECT_COLLECTIVES = (
    "broadcast_object_list",
    "all_gather_object",
    "gather_object",
    "scatter_object_list",
    "send_object_list",
    "recv_object_list",
)

_get_backend = dist.get_backend  # the real one, where a test makes the engine see another

BACKEND_DEVICES = {
    "gloo": {"cpu"},
    "nccl": {"cuda"},
    "xccl": {"xpu"},
    "mpi": {"cpu", "cuda"},
    "ucc": {"cpu", "cuda"},
}


def served(backend: str) -> set[str]:
    """Device types a backend string serves: ``"gloo"`` the CPU, ``"nccl"`` CUDA, and a
    ``"cpu:gloo,cuda:nccl"`` string each device it names. Gloo's staging of CUDA tensors through
    the host counts as not serving CUDA: it is the blocking host round trip issue 17 removes."""
    if ":" in backend:
        return {part.split(":")[0].strip() for part in backend.split(",")}
    return set(BACKEND_DEVICES.get(backend, set()))


def _explicit_device(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The device a call names (``device=``, ``.to(device)``, ``.cuda()``, ``.cpu()``), or
    ``None``."""
    if kwargs.get("device") is not None:
        return kwargs["device"]
    name = getattr(func, "__name__", "")
    if name == "cpu":
        return "cpu"
    if name == "cuda":
        return "cuda"
    if name == "to":
        for a in args[1:]:
            if isinstance(a, (torch.device, str)):
                return a
            if isinstance(a, Tensor):
                return a.device
    return None


class _Marks(TorchFunctionMode):
    """Marks tensors that would be on the CPU on a GPU run (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._marked: dict[int, weakref.ref[Tensor]] = {}

    def marked(self, t: Tensor) -> bool:
        ref = self._marked.get(id(t))
        return ref is not None and ref() is t

    def _mark(self, out: Any) -> None:
        for t in pytree.tree_leaves(out):
            if isinstance(t, Tensor):
                self._marked[id(t)] = weakref.ref(t)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        device = _explicit_device(func, args, kwargs)
        if device is not None:
            if isinstance(device, str) and device.startswith("cpu"):
                self._mark(out)  # a literal CPU device: the CPU on a GPU run too
            elif self.marked(out) and any(out is a for a in args):
                # ``.to(device)`` returns its input when already there (always, on one CPU);
                # on a GPU run it is a new tensor on the device: give it a fresh, unmarked alias.
                out = out.as_subclass(Tensor)
            return out
        if func in FACTORIES:
            if not (args and isinstance(args[0], Tensor)):  # a tensor's copy keeps its device
                self._mark(out)
            return out
        name = getattr(func, "__name__", "")
        if (name.endswith("_") and not name.endswith("__")) or "out" in kwargs:
            return out  # in place: the target keeps its device
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        marked = [t for t in inputs if self.marked(t)]
        if marked and (len(marked) == len(inputs) or any(t.dim() > 0 for t in marked)):
            self._mark(out)
        return out


class _Collectives(TorchDispatchMode):
    """Checks the tensors of every collective op against the parameters' device."""

    def __init__(self, marks: _Marks, device: torch.device, found: list[str], ops: Counter[str]):
        super().__init__()
        self.marks, self.device, self.found, self.ops = marks, device, found, ops

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func.namespace in ("c10d", "_c10d_functional"):
            self._check(str(func), [*args, *(kwargs or {}).values()])
        return func(*args, **(kwargs or {}))

    def _check(self, op: str, args: list[Any]) -> None:
        self.ops[op] += 1
        backend = self._backend(args)
        for t in pytree.tree_leaves(args):
            if not isinstance(t, Tensor):
                continue
            what = f"{op}: tensor {tuple(t.shape)} {t.dtype}"
            if self.marks.marked(t):
                self.found.append(f"{what} was made without device= (CPU on a GPU run)")
            if t.device != self.device:
                self.found.append(f"{what} is on {t.device}, the parameters on {self.device}")
            if backend is not None and t.device.type not in served(backend):
                self.found.append(f"{what} on {t.device.type}, which backend {backend} lacks")

    @staticmethod
    def _backend(args: list[Any]) -> str | None:
        for a in args:
            if isinstance(a, torch.ScriptObject) and "ProcessGroup" in str(a._type()):
                return str(_get_backend(dist.ProcessGroup.unbox(a)))
            if isinstance(a, str) and a in c10d._world.pg_names.values():
                return str(_get_backend(c10d._resolve_process_group(a)))
        return None


@contextmanager
def spy(device: torch.device) -> Iterator[tuple[list[str], Counter[str]]]:
    """Within: every collective's tensors checked (module doc); yields the list the
    violations go to and the count of collective ops seen by name."""
    found: list[str] = []
    ops: Counter[str] = Counter()

    def refuse(name: str) -> Callable[..., Any]:
        original = getattr(dist, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found.append(f"{name}: an object collective (pickled through the default device)")
            return original(*args, **kwargs)

        return wrapper

    marks = _Marks()
    saved = {name: getattr(dist, name) for name in OBJECT_COLLECTIVES}
    try:
        for name in OBJECT_COLLECTIVES:
            wrapper = refuse(name)
            setattr(dist, name, wrapper)
            setattr(c10d, name, wrapper)
        with ExitStack() as stack:
            stack.enter_context(marks)
            stack.enter_context(_Collectives(marks, device, found, ops))
            yield found, ops
    finally:
        for name, original in saved.items():
            setattr(dist, name, original)
            setattr(c10d, name, original)


# -- per-rank functions (module level: picklable) --------------------------------------------------


def _objects(mode: str, name: str) -> tuple[nn.Module, Any]:
    """``mode``: ``ddp`` and ``fsdp`` as ``workers.wrap``; ``group``: a plain model and
    ``process_group=`` (replicated, no DDP); ``replicate``: DDP with ``replicate_state``."""
    if mode == "group":
        m: nn.Module = W.model()
        return m, build(name, m, process_group=dist.group.WORLD)
    if mode == "replicate":
        spec = get(name)
        m = W.wrap("ddp")
        plan = spec.whole_model_plan()
        opt = ChainOptimizer(
            m, plan, lr=spec.lr, weight_decay=spec.weight_decay, replicate_state=True
        )
        return m, opt
    m = W.wrap(mode)
    return m, build(name, m)


def _grads(m: nn.Module, mode: str, rank: int, step: int) -> None:
    m.zero_grad(set_to_none=True)
    W.loss(m, W.batch(step, rank)).backward()


def audit(rank: int, mode: str, name: str) -> tuple[list[str], dict[str, int]]:
    """Two steps, ``consolidate_state_dict``, ``state_dict``, ``load_state_dict`` of the
    consolidated dict, one more step: each under the spy (training's forward and backward
    outside it: FSDP2's and DDP's own collectives are torch's). Returns the violations and the
    collective ops seen."""
    m, opt = _objects(mode, name)
    device = next(m.parameters()).device
    found: list[str] = []
    ops: Counter[str] = Counter()

    def watched(call: Callable[[], Any]) -> Any:
        with spy(device) as (f, o):
            out = call()
        found.extend(f)
        ops.update(o)
        return out

    for step in range(2):
        _grads(m, mode, rank, step)
        watched(opt.step)
    watched(opt.consolidate_state_dict)
    saved = watched(opt.state_dict)
    watched(lambda: opt.load_state_dict(saved))
    _grads(m, mode, rank, 2)
    watched(opt.step)
    return found, dict(ops)


def self_check(rank: int) -> dict[str, list[str]]:
    """What the spy reports for collectives known to be right or wrong: its own test."""
    device = torch.device("cpu")
    param = torch.ones(3)  # made outside the spy: a parameter, on the parameters' device
    cases: dict[str, Callable[[], Any]] = {
        "flag without device": lambda: dist.all_reduce(torch.tensor([1.0])),
        "flag with the parameter's device": lambda: dist.all_reduce(
            torch.tensor([1.0], device=param.device)
        ),
        "literal cpu device": lambda: dist.all_reduce(torch.zeros(1, device="cpu")),
        "derived from a device-less tensor": lambda: dist.all_reduce(torch.zeros(2) * param[:2]),
        "device-less tensor moved to the device": lambda: dist.all_reduce(
            torch.zeros(2).to(param.device)
        ),
        "a view of a device-less buffer": lambda: dist.all_reduce(torch.zeros(4)[:2]),
        "a 0-d host scalar times the parameter": lambda: dist.all_reduce(torch.tensor(2.0) * param),
        "object collective": lambda: dist.all_gather_object([None, None], rank),
    }
    out = {}
    for label, call in cases.items():
        with spy(device) as (found, _):
            call()
        out[label] = found
    return out


def rendezvous(rank: int, backend: str) -> tuple[list[str], dict[str, int]]:
    """``consolidate_state_dict`` after a DDP step of muon while the engine reads the group's
    backend as ``backend`` (the collectives still run on gloo); violations and ops seen."""
    m, opt = _objects("ddp", "muon")
    _grads(m, "ddp", rank, 0)
    opt.step()
    dist.get_backend = lambda group=None: backend
    try:
        with spy(next(m.parameters()).device) as (found, ops):
            opt.consolidate_state_dict()
    finally:
        dist.get_backend = _get_backend
    return found, dict(ops)
