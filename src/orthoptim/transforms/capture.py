"""The capture adapter: layer inputs and output gradients for activation-based preconditioners.

K-FAC-style methods (MKOR) precondition a layer's weight gradient with statistics of the layer's
input ``a`` and of the gradient ``g`` of the loss with respect to its output, which the gradient
alone does not carry. ``ActivationCapture`` records them with module hooks and hands them to a
transform, keyed by the weight parameter, so the gradient-only chain stays as it is.

It lives in ``transforms/`` (layer 2) because the transforms that read it are there; the registry
(layer 4) attaches it to a model in ``build``. Nothing is hooked until ``attach``; ``remove``
takes every hook off again, and so does dropping the last reference to the capture (the hooks
hold it only weakly, so a model never keeps an optimizer's capture alive).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, cast, get_args

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from orthoptim.functional.moments import stats_dtype


def is_hf_conv1d(m: nn.Module) -> bool:
    """Whether ``m`` is (a subclass of) Hugging Face's ``Conv1D``, recognised by name so that
    transformers stays optional."""
    return any(
        c.__module__ == "transformers.pytorch_utils" and c.__name__ == "Conv1D"
        for c in type(m).__mro__
    )


def is_dense(m: nn.Module) -> bool:
    """A layer applying its weight to the last dim of its input: ``nn.Linear`` or ``Conv1D``."""
    return isinstance(m, nn.Linear) or is_hf_conv1d(m)


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The convolutions whose weight is ``(out, in, *kernel)`` over the unfolded input."""
Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d


def _conv_patch_mean(m: Conv, xbar: Tensor) -> Tensor:
    """The mean unfolded column of the mean image ``xbar`` (channels, *spatial).

    Unfolding is linear, so this equals the mean over batch and output positions of the unfolded
    input; one strided slice per kernel offset costs O(C K L), not the O(N C K L) of unfolding the
    batch.
    """
    kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
    nd = len(kernel)
    xbar = nn.functional.pad(xbar, m._reversed_padding_repeated_twice)
    positions = [
        (xbar.shape[1 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(nd)
    ]
    columns = []
    for offset in itertools.product(*(range(k) for k in kernel)):  # row-major, as in the weight
        window = tuple(
            slice(o * dil, o * dil + st * (n - 1) + 1, st)
            for o, dil, st, n in zip(offset, dilation, stride, positions, strict=True)
        )
        index = (slice(None), *window)  # mypy reads x[(a, *b)] as 3.11's x[a, *b]
        columns.append(xbar[index].flatten(1))
    # (C, K, L) is the unfolded mean image, rows in the weight's column order (in-channel-major,
    # then kernel offset); reducing it as one (C K, L) block keeps Conv2d's numbers bit-exact.
    return torch.stack(columns, 1).flatten(0, 1).mean(1)


def _input_mean(m: nn.Module, x: Tensor) -> Tensor:
    """Batch (and token / patch) average of the layer input: a vector of the weight's columns."""
    x = x.detach()
    x = x.to(stats_dtype(x))
    if is_dense(m):
        return x.reshape(-1, x.shape[-1]).mean(0)
    conv = cast(Conv, m)  # the hooks attach to dense layers and CONVS only
    batched = x.dim() == len(conv.kernel_size) + 2
    return _conv_patch_mean(conv, x.mean(0) if batched else x)


def _conv_patches(m: Conv, x: Tensor) -> Tensor:
    """The unfolded input of a convolution, one row per (sample, output position), its columns
    in the weight's column order (the batched form of ``_conv_patch_mean``'s slices)."""
    x = x if x.dim() == len(m.kernel_size) + 2 else x.unsqueeze(0)
    kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
    x = nn.functional.pad(x, m._reversed_padding_repeated_twice)
    positions = [
        (x.shape[2 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
        for d in range(len(kernel))
    ]
    columns = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(o * dil, o * dil + st * (n - 1) + 1, st)
            for o, dil, st, n in zip(offset, dilation, stride, positions, strict=True)
        )
        index = (slice(None), slice(None), *window)  # mypy reads x[(a, *b)] as 3.11's x[a, *b]
        columns.append(x[index].flatten(2))
    # (N, C, K, L) -> (N L, C K)
    return (
        torch.stack(columns, 2).flatten(1, 2).transpose(1, 2).reshape(-1, x.shape[1] * len(columns))
    )


def _input_covariance(m: nn.Module, x: Tensor) -> Tensor:
    """``A^T A / rows`` of the layer input as a matrix ``A`` with one row per sample and token
    (dense layers) or per sample and output position (convolutions, unfolded): the K-FAC input
    factor, ``ComputeCovA`` of yorkerlin/StructuredNGD-DL and SINGD's ``kfac_approx="expand"``."""
    x = x.detach()
    x = x.to(stats_dtype(x))
    # the hooks attach to dense layers and CONVS only
    rows = x.reshape(-1, x.shape[-1]) if is_dense(m) else _conv_patches(cast(Conv, m), x)
    return rows.T @ (rows / rows.shape[0])


def _output_grad_covariance(m: nn.Module, grad: Tensor) -> Tensor:
    """``n G^T G`` of the output gradient as a matrix ``G`` with one row per sample and token
    (or output position), ``n`` the leading (batch) dim: for a loss averaged over the batch,
    the mean over samples of the per-sample gradients' outer products (SINGD's
    ``loss_average="batch"``; the reference's ``batch_averaged=True`` on 2-D inputs)."""
    grad = grad.detach().to(stats_dtype(grad))
    if is_dense(m):
        n = grad.shape[0] if grad.dim() > 1 else 1
        rows = grad.reshape(-1, grad.shape[-1])
    else:
        conv = cast(Conv, m)  # the hooks attach to dense layers and CONVS only
        grad = grad if grad.dim() == len(conv.kernel_size) + 2 else grad.unsqueeze(0)
        n = grad.shape[0]
        rows = grad.flatten(2).transpose(1, 2).reshape(-1, grad.shape[1])
    return rows.T @ (rows * n)


Statistics = Literal["mean", "covariance"]
STATISTICS: tuple[str, ...] = get_args(Statistics)


def _output_grad_sum(m: nn.Module, grad: Tensor) -> Tensor:
    """Sum over the batch (mean over conv positions) of the output gradient: the reference's
    ``n * mean`` that undoes a mean-reduced loss."""
    grad = grad.detach().to(stats_dtype(grad))
    if is_dense(m):
        return grad.reshape(-1, grad.shape[-1]).sum(0)
    conv = cast(Conv, m)  # the hooks attach to dense layers and CONVS only
    grad = grad if grad.dim() == len(conv.kernel_size) + 2 else grad.unsqueeze(0)
    return grad.sum(0).mean(tuple(range(1, grad.dim() - 1)))


def _layer_reason(m: nn.Module, parent: nn.Module | None = None) -> str | None:
    """Why the capture cannot record ``m``'s weight statistics, or ``None`` when it can: the one
    rule behind both the hooks ``attach`` installs and ``uncapturable_reason``."""
    name = type(m).__name__
    if isinstance(parent, nn.MultiheadAttention) and m is parent.out_proj:
        return (
            "out_proj of a MultiheadAttention is applied inside F.multi_head_attention_forward, "
            "never through its own forward, so module hooks cannot see its inputs and output "
            "gradients"
        )
    if is_dense(m):
        return None
    if isinstance(m, CONVS):
        if m.groups != 1:
            return f"groups={m.groups}: the weight's columns are not the layer's unfolded input"
        if m.padding_mode != "zeros":
            return (
                f"padding_mode={m.padding_mode!r}: the capture's mean patch assumes zero padding, "
                "so it would not match the weight's columns"
            )
        return None
    if isinstance(m, nn.MultiheadAttention):
        return (
            "MultiheadAttention computes its projections inside F.multi_head_attention_forward, "
            "where module hooks cannot see their inputs and output gradients"
        )
    if isinstance(m, nn.RNNBase):
        return (
            f"{name} applies its weights inside the fused recurrent kernel at every time step, "
            "where module hooks cannot see the per-step inputs and output gradients"
        )
    if isinstance(m, nn.RNNCellBase):
        return (
            f"{name} applies its weights inside a fused cell kernel, where module hooks cannot "
            "see the gate pre-activations' gradients"
        )
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return (
            f"{name}'s weight is (in, out, *kernel), the adjoint of a convolution: its columns "
            "are not the layer's unfolded input"
        )
    if isinstance(m, nn.Bilinear):
        return (
            "Bilinear's weight is (out, in1, in2), a form in two inputs, not a matrix applied to "
            "one input"
        )
    return f"{name} is not a layer type MKOR captures (Linear, Conv1d/2d/3d, transformers Conv1D)"


def _capturable(m: nn.Module, parent: nn.Module | None = None) -> bool:
    return _layer_reason(m, parent) is None


def uncapturable_reason(
    module: nn.Module, param_name: str, *, parent: nn.Module | None = None
) -> str | None:
    """``None`` when the capture records statistics for ``module``'s own parameter
    ``param_name`` (e.g. ``"weight"``); otherwise one sentence saying why not, for a routing table.

    ``parent`` is the module that holds ``module``, when known: some layers (``out_proj`` of
    ``nn.MultiheadAttention``) are capturable on their own but never run their forward inside
    their parent. ``uncapturable_params`` supplies it for a whole model.
    """
    reason = _layer_reason(module, parent)
    if reason is None and param_name != "weight":
        return (
            f"{param_name} is not the layer's weight: MKOR's factors describe only the weight's "
            "rows and columns"
        )
    return reason


def uncapturable_params(model: nn.Module) -> dict[str, str]:
    """Full name -> reason for every parameter of ``model`` with two or more dims that the
    capture cannot serve (names as ``model.named_parameters()`` gives them).

    A weight shared by several layers (tied embeddings) is served only when every layer using
    it is captured: statistics of some of its uses would not describe its whole gradient.
    """
    return _survey(model)[1]


def _survey(model: nn.Module) -> tuple[list[nn.Module], dict[str, str]]:
    """The layers ``attach`` hooks and the uncapturable parameters, decided together."""
    names = {id(p): n for n, p in model.named_parameters()}
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    layers: list[nn.Module] = []
    reasons: dict[int, str] = {}
    captured: set[int] = set()
    for m in model.modules():
        parent = parents.get(id(m))
        if _capturable(m, parent):
            layers.append(m)
            captured.add(id(m.weight))
        for pname, p in m.named_parameters(recurse=False):
            reason = uncapturable_reason(m, pname, parent=parent)
            if p.dim() >= 2 and reason is not None:
                reasons.setdefault(id(p), reason)
    layers = [m for m in layers if id(m.weight) not in reasons]
    out: dict[str, str] = {}
    for pid, reason in reasons.items():
        if pid in captured:
            reason = f"it is shared with a layer the capture cannot see: {reason}"
        out[names[pid]] = reason
    return layers, out


@dataclass(slots=True)
class _Slot:
    """Running sums for one weight since its statistics were last taken."""

    a: Tensor | None = None
    g: Tensor | None = None
    count: int = 0

    def add(self, weight: Tensor, a: Tensor, g: Tensor) -> None:
        # A weight with no gradient yet starts a new accumulation: statistics of a backward whose
        # step was skipped (or that was followed by zero_grad) are dropped with its gradient.
        if weight.grad is None or self.a is None or self.g is None:
            self.a, self.g, self.count = a, g, 1
        else:
            self.a, self.g, self.count = self.a + a, self.g + g, self.count + 1


@dataclass(eq=False)  # no slots: weakref_slot needs Python 3.11
class ActivationCapture:
    """Per weight of every ``nn.Linear``, transformers ``Conv1D`` and zero-padded ungrouped
    ``nn.Conv1d/2d/3d``: the mean layer input ``a`` (over the weight's matrix-view columns; for
    ``Conv1D``, whose weight is stored ``(in, out)``, over its rows) and the summed output gradient
    ``g`` of the backward passes since the last ``take`` (averaged over accumulated micro-batches).

    Recording needs autograd: a forward under ``torch.no_grad`` (evaluation) records nothing, and
    a forward without a backward leaves nothing behind. Every other weight keeps MKOR's identity
    factors; ``uncapturable_params`` says which and why.
    """

    _slots: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary)
    _handles: list[RemovableHandle] = field(default_factory=list)
    _finalizer: Any = None
    statistics: Statistics = "mean"
    """``"mean"``: the vectors ``a``, ``g`` above (MKOR); ``"covariance"``: the K-FAC factors
    ``a``, ``g`` = ``_input_covariance``, ``_output_grad_covariance`` (in x in, out x out)."""

    def __post_init__(self) -> None:
        if self.statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {STATISTICS}, got {self.statistics!r}")

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: nn.Module) -> None:
        """Hook every capturable layer of ``model``; ``RuntimeError`` if already attached."""
        if self.attached:
            raise RuntimeError("this capture is already attached; call remove() first")
        ref = weakref.ref(self)
        for m in _survey(model)[0]:
            if m.weight not in self._slots:  # a weight shared by layers gets one slot
                self._slots[m.weight] = _Slot()
            self._handles.append(m.register_forward_hook(partial(_on_forward, ref)))
        # Dropping the capture (with its optimizer) takes the hooks off the model.
        self._finalizer = weakref.finalize(self, _remove_all, list(self._handles))

    def remove(self) -> None:
        """Take every hook off and forget pending statistics."""
        _remove_all(self._handles)
        self._handles.clear()
        self._slots.clear()
        if self._finalizer is not None:
            self._finalizer.detach()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Hooks belong to one model: a copy (copy, deepcopy, pickle) starts unattached.
        return (_unattached, (self.statistics,))

    def __deepcopy__(self, memo: dict[int, Any]) -> ActivationCapture:
        return _unattached(self.statistics)

    def tracks(self, weight: Tensor) -> bool:
        return weight in self._slots

    def take(self, weight: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(a, g)`` averaged over the backward passes since the last call, or ``None``."""
        slot = self._slots.get(weight)
        if slot is None or slot.a is None or slot.g is None:
            return None
        out = (slot.a / slot.count, slot.g / slot.count)
        slot.a, slot.g, slot.count = None, None, 0
        return out

    def record(self, m: nn.Module, x: Tensor, output: Tensor) -> None:
        slot = self._slots.get(m.weight)
        if slot is None or not torch.is_grad_enabled() or not output.requires_grad:
            return
        if self.statistics == "mean":
            output.register_hook(partial(_on_grad, slot, m, _input_mean(m, x), _output_grad_sum))
        else:
            stat = _input_covariance(m, x)
            output.register_hook(partial(_on_grad, slot, m, stat, _output_grad_covariance))


def _unattached(statistics: str) -> ActivationCapture:
    return ActivationCapture(statistics=statistics)  # type: ignore[arg-type]


def _on_forward(ref: weakref.ref, m: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    capture = ref()
    if capture is not None and args and isinstance(output, Tensor):
        capture.record(m, args[0], output)


def _on_grad(slot: _Slot, m: nn.Module, a: Tensor, reduce: Any, grad: Tensor) -> None:
    slot.add(cast(Tensor, m.weight), a, reduce(m, grad))


def _remove_all(handles: Iterable[RemovableHandle]) -> None:
    for h in handles:
        h.remove()


def attach_captures(chains: Iterable[Any], model: nn.Module) -> list[ActivationCapture]:
    """Attach every transform's ``capture`` in ``chains`` to ``model``; returns them."""
    found = [t.capture for chain in chains for t in chain.transforms if t.needs_module]
    for capture in found:
        capture.attach(model)
    return found
