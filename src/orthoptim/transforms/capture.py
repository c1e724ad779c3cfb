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

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from orthoptim.functional.moments import stats_dtype


def _input_mean(m: nn.Module, x: Tensor) -> Tensor:
    """Batch (and token / patch) average of the layer input: a vector of the weight's columns."""
    x = x.detach()
    x = x.to(stats_dtype(x))
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1]).mean(0)
    xbar = (x if x.dim() == 4 else x.unsqueeze(0)).mean(0, keepdim=True)
    # Unfolding is linear, so the mean patch is the unfolded mean image: O(K L), not O(N K L).
    xbar = nn.functional.pad(xbar, m._reversed_padding_repeated_twice)  # type: ignore[arg-type]
    patches = nn.functional.unfold(xbar, m.kernel_size, m.dilation, 0, m.stride)  # type: ignore[arg-type]
    return patches.mean(-1)[0]


def _output_grad_sum(m: nn.Module, grad: Tensor) -> Tensor:
    """Sum over the batch (mean over conv positions) of the output gradient: the reference's
    ``n * mean`` that undoes a mean-reduced loss."""
    grad = grad.detach().to(stats_dtype(grad))
    if isinstance(m, nn.Linear):
        return grad.reshape(-1, grad.shape[-1]).sum(0)
    grad = grad if grad.dim() == 4 else grad.unsqueeze(0)
    return grad.sum(0).mean((1, 2))


def _capturable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return (
        isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
    )  # other convs' weight columns are not the zero-padded unfolded input


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


@dataclass(eq=False, slots=True, weakref_slot=True)
class ActivationCapture:
    """Per weight of every ``nn.Linear`` / ``nn.Conv2d``: the mean layer input ``a`` and the summed
    output gradient ``g`` of the backward passes since the last ``take`` (averaged over
    accumulated micro-batches).

    Recording needs autograd: a forward under ``torch.no_grad`` (evaluation) records nothing, and
    a forward without a backward leaves nothing behind. Grouped and non-zero-padded convolutions
    are not captured (their statistics would not match the weight's columns).
    """

    _slots: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary)
    _handles: list[RemovableHandle] = field(default_factory=list)
    _finalizer: Any = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: nn.Module) -> None:
        """Hook every capturable layer of ``model``; ``RuntimeError`` if already attached."""
        if self.attached:
            raise RuntimeError("this capture is already attached; call remove() first")
        ref = weakref.ref(self)
        for m in model.modules():
            if _capturable(m) and m.weight is not None:
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

    def __reduce__(self) -> tuple[type[ActivationCapture], tuple[()]]:
        # Hooks belong to one model: a copy (copy, deepcopy, pickle) starts unattached.
        return (ActivationCapture, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> ActivationCapture:
        return ActivationCapture()

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
        output.register_hook(partial(_on_grad, slot, m, _input_mean(m, x)))


def _on_forward(ref: weakref.ref, m: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    capture = ref()
    if capture is not None and args and isinstance(output, Tensor):
        capture.record(m, args[0], output)


def _on_grad(slot: _Slot, m: nn.Module, a: Tensor, grad: Tensor) -> None:
    slot.add(m.weight, a, _output_grad_sum(m, grad))


def _remove_all(handles: Iterable[RemovableHandle]) -> None:
    for h in handles:
        h.remove()


def attach_captures(chains: Iterable[Any], model: nn.Module) -> list[ActivationCapture]:
    """Attach every transform's ``capture`` in ``chains`` to ``model``; returns them."""
    found = [
        t.capture
        for chain in chains
        for t in chain.transforms
        if isinstance(getattr(t, "capture", None), ActivationCapture)
    ]
    for capture in found:
        capture.attach(model)
    return found
