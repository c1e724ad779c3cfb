"""One traced forward of a model: how each parameter is used, and which ones make the output.

Routing by names and module types misses models that compute their output with a functional
call (``F.linear(h, emb.weight)``), declare their output layer before the trunk, or keep tables
as bare ``nn.Parameter``. A forward on an example input, watched with a ``TorchFunctionMode``,
sees instead what each parameter does: the weight of a matrix product (and in which orientation,
``x @ W`` or ``F.linear(x, W)``, whole or one slice of a stack), a lookup table, or an
element-wise operand; and walking back from the output through the recorded operations finds the
matrix products that produce it: the heads.

The forward runs in evaluation mode without gradients and with the random number generators
restored after, so tracing changes nothing in the model (BatchNorm statistics, dropout draws).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

# (argument index or keyword, layout the weight has when it sits there)
_WEIGHT_LAST = "in_out"  # x @ W: W is (in, out)
_WEIGHT_FIRST = "out_in"  # W @ x, F.linear(x, W): W is (out, in)
_MATMULS: dict[Callable[..., Any], tuple[tuple[int, str], ...]] = {
    F.linear: ((1, _WEIGHT_FIRST),),
    F.bilinear: ((2, _WEIGHT_FIRST),),
    F.conv1d: ((1, _WEIGHT_FIRST),),
    F.conv2d: ((1, _WEIGHT_FIRST),),
    F.conv3d: ((1, _WEIGHT_FIRST),),
    F.conv_transpose1d: ((1, _WEIGHT_LAST),),
    F.conv_transpose2d: ((1, _WEIGHT_LAST),),
    F.conv_transpose3d: ((1, _WEIGHT_LAST),),
    torch.matmul: ((0, _WEIGHT_FIRST), (1, _WEIGHT_LAST)),
    Tensor.matmul: ((0, _WEIGHT_FIRST), (1, _WEIGHT_LAST)),
    Tensor.__matmul__: ((0, _WEIGHT_FIRST), (1, _WEIGHT_LAST)),
    Tensor.__rmatmul__: ((1, _WEIGHT_FIRST), (0, _WEIGHT_LAST)),
    torch.mm: ((0, _WEIGHT_FIRST), (1, _WEIGHT_LAST)),
    Tensor.mm: ((0, _WEIGHT_FIRST), (1, _WEIGHT_LAST)),
    torch.bmm: ((0, _WEIGHT_FIRST), (1, _WEIGHT_LAST)),
    Tensor.bmm: ((0, _WEIGHT_FIRST), (1, _WEIGHT_LAST)),
    torch.addmm: ((1, _WEIGHT_FIRST), (2, _WEIGHT_LAST)),
    Tensor.addmm: ((1, _WEIGHT_FIRST), (2, _WEIGHT_LAST)),
    torch.baddbmm: ((1, _WEIGHT_FIRST), (2, _WEIGHT_LAST)),
}
_LOOKUPS: dict[Callable[..., Any], int] = {F.embedding: 1, F.embedding_bag: 1}
# Operations whose output is the same tensor seen differently: a parameter passed through them
# is still that parameter (a slice of it for the selecting ones).
_SELECTS = {Tensor.__getitem__, Tensor.select, torch.select, Tensor.unbind, torch.unbind}
_TRANSPOSES = {Tensor.t, torch.t, Tensor.mT.__get__, Tensor.T.__get__}  # type: ignore[attr-defined]
_VIEWS = {
    Tensor.view,
    Tensor.reshape,
    torch.reshape,
    Tensor.contiguous,
    Tensor.to,
    Tensor.type_as,
    Tensor.float,
    Tensor.half,
    Tensor.bfloat16,
    Tensor.chunk,
    torch.chunk,
    Tensor.split,
    torch.split,
}


@dataclass
class Usage:
    """What the traced forward did with one parameter."""

    matmul_layout: str | None = None
    """``"out_in"`` / ``"in_out"`` (or ``"stacked_..."``) when it was the weight of a product."""
    lookup: bool = False
    """It was an embedding table (``F.embedding``). A parameter with neither entered only other
    operations (an addition, a normalisation's gain, a concatenation)."""


@dataclass
class _Source:
    """A tensor that is a parameter seen through views: which one, sliced, transposed."""

    param: Tensor
    sliced: bool = False
    transposed: bool = False


@dataclass
class _Node:
    inputs: list[Tensor]
    weights: list[Tensor]  # parameters used as the weight of a matrix product here


@dataclass
class Trace:
    """The outcome of ``trace``: per parameter its usage, and the parameters of the matrix
    products that produce the output."""

    usage: dict[int, Usage] = field(default_factory=dict)
    heads: set[int] = field(default_factory=set)

    def usage_of(self, p: Tensor) -> Usage | None:
        return self.usage.get(id(p))


def _transposes(func: Callable[..., Any], args: tuple[Any, ...]) -> bool:
    if func in _TRANSPOSES:
        return True
    if func in (Tensor.transpose, torch.transpose, Tensor.swapaxes) and len(args) >= 3:
        ndim = args[0].ndim
        return {int(args[1]) % ndim, int(args[2]) % ndim} == {ndim - 1, ndim - 2}
    return False


class _Recorder(TorchFunctionMode):
    def __init__(self, params: Mapping[int, Tensor]) -> None:
        super().__init__()
        self.params = params
        self.sources: dict[int, _Source] = {}
        self.producers: dict[int, _Node] = {}
        self.keep: list[Any] = []  # holds every recorded tensor, so no id is reused
        self.trace = Trace()

    def source(self, t: Any) -> _Source | None:
        if not isinstance(t, Tensor):
            return None
        if id(t) in self.params:
            return _Source(self.params[id(t)])
        return self.sources.get(id(t))

    def use(self, p: Tensor) -> Usage:
        return self.trace.usage.setdefault(id(p), Usage())

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        out = func(*args, **kwargs)
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)]
        flat_out = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
        self.keep.append((flat_in, flat_out))
        first = self.source(args[0]) if args else None
        if first is not None and (func in _VIEWS or func in _SELECTS or _transposes(func, args)):
            sliced = first.sliced or (func in _SELECTS and first.param.ndim >= 3)
            transposed = first.transposed ^ _transposes(func, args)
            for o in flat_out:
                self.sources[id(o)] = _Source(first.param, sliced, transposed)
            return out
        weights = self._record_weights(func, args, kwargs)
        for a in flat_in:
            src = self.source(a)
            if src is not None:
                self.use(src.param)  # recorded as used, whatever the operation
        node = _Node([a for a in flat_in if self.source(a) is None], weights)
        for o in flat_out:
            earlier = self.producers.get(id(o))
            if earlier is not None and any(o is a for a in flat_in):
                # In place, or an identity (``x.float()`` of a float32 x): the tensor now also
                # depends on the other inputs; what produced it before still did.
                earlier.inputs.extend(a for a in node.inputs if a is not o)
                earlier.weights.extend(node.weights)
            else:
                self.producers[id(o)] = node
        return out

    def _record_weights(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> list[Tensor]:
        """The parameters this call uses as the weight of a matrix product (recorded with
        their layout), or as a lookup table."""
        if func in _LOOKUPS:
            src = self.source(_arg(args, kwargs, _LOOKUPS[func], "weight"))
            if src is not None:
                self.use(src.param).lookup = True
                return [src.param]
            return []
        if func is F.multi_head_attention_forward:
            found = []
            for key, index in (("in_proj_weight", 5), ("out_proj_weight", 11)):
                src = self.source(_arg(args, kwargs, index, key))
                if src is not None:
                    self.use(src.param).matmul_layout = _WEIGHT_FIRST
                    found.append(src.param)
            for key in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                src = self.source(kwargs.get(key))
                if src is not None:
                    self.use(src.param).matmul_layout = _WEIGHT_FIRST
                    found.append(src.param)
            return found
        found = []
        for index, layout in _MATMULS.get(func, ()):
            src = self.source(_arg(args, kwargs, index, None))
            if src is None:
                continue
            if src.transposed:
                layout = _WEIGHT_LAST if layout == _WEIGHT_FIRST else _WEIGHT_FIRST
            usage = self.use(src.param)
            if usage.matmul_layout is None:
                usage.matmul_layout = f"stacked_{layout}" if src.sliced else layout
            found.append(src.param)
        return found

    def heads_of(self, outputs: list[Tensor]) -> set[int]:
        """Parameters of the last matrix products on every path back from ``outputs``."""
        heads: set[int] = set()
        seen: set[int] = set()
        stack = list(outputs)
        while stack:
            t = stack.pop()
            if id(t) in seen:
                continue
            seen.add(id(t))
            node = self.producers.get(id(t))
            if node is None:
                continue
            if node.weights:
                heads.update(id(w) for w in node.weights if self.use(w).matmul_layout)
                continue
            stack.extend(node.inputs)
        return heads


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, key: str | None) -> Any:
    if index < len(args):
        return args[index]
    return kwargs.get(key) if key is not None else None


def output_tensors(output: Any) -> list[Tensor]:
    """The tensors of a forward's output a user reads: its logits where it has them (Hugging
    Face outputs: ``logits``, CLIP's ``logits_per_image``), else its top-level tensors (not
    those of nested outputs, such as a tower's hidden states), else every tensor in it."""
    if isinstance(output, Tensor):
        return [output]
    fields = dict(output) if isinstance(output, Mapping) else {}
    if not fields and isinstance(output, (tuple, list)):
        fields = {str(i): v for i, v in enumerate(output)}
    logits = [v for k, v in fields.items() if "logits" in k and isinstance(v, Tensor)]
    top = [v for v in fields.values() if isinstance(v, Tensor)]
    return logits or top or [t for t in tree_flatten(output)[0] if isinstance(t, Tensor)]


def call(model: nn.Module, example_input: Any) -> Any:
    """``model(**example_input)`` for a mapping, ``model(*example_input)`` for a tuple or list,
    ``model(example_input)`` otherwise."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


@contextlib.contextmanager
def _evaluation(model: nn.Module) -> Iterator[None]:
    """Evaluation mode, no gradients and the random generators as they were, for one forward."""
    modes = [(m, m.training) for m in model.modules()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            yield
    finally:
        for m, training in modes:
            m.training = training


def trace(model: nn.Module, example_input: Any) -> Trace:
    """Run ``model`` once on ``example_input`` (see ``call``) and record how each parameter is
    used and which parameters produce the output (``Trace``). The model is left as it was."""
    params = {id(p): p for p in model.parameters()}
    recorder = _Recorder(params)
    with _evaluation(model), recorder:
        output = call(model, example_input)
    recorder.trace.heads = recorder.heads_of(output_tensors(output))
    return recorder.trace
