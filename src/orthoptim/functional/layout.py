"""How a parameter stores its matrix (or matrices): the views the matrix transforms work on.

Matrix transforms read a weight as ``(out, in, *kernel)``, torch's ``nn.Linear`` / ``nn.ConvNd``
order: rows are output neurons, columns input features. Some layers store it otherwise:

- ``"out_in"``: ``(out, in, *kernel)``, torch's convention (the default);
- ``"in_out"``: ``(in, out, *kernel)``: Hugging Face ``Conv1D`` (GPT-2: ``y = x W + b``) and
  ``nn.ConvTranspose*d``;
- ``"stacked_out_in"``: ``(n, out, in)``, ``n`` separate matrices (mixture-of-experts weights
  used as ``F.linear(x, W[e])``);
- ``"stacked_in_out"``: ``(n, in, out)``, ``n`` matrices used as ``x @ W[e]``.

``matrices`` returns views in ``(out, in, ...)`` order, so a transform written for torch's order
(a per-output-neuron norm, a ``rows/cols`` shape factor, left and right Kronecker factors) is
right for every layout.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

MatrixLayout = Literal["out_in", "in_out", "stacked_out_in", "stacked_in_out"]
LAYOUTS: tuple[str, ...] = get_args(MatrixLayout)
DEFAULT_LAYOUT = "out_in"


def is_stacked(layout: str) -> bool:
    """Whether ``layout`` holds several matrices along its first dimension."""
    return layout.startswith("stacked_")


def check_layout(layout: str, shape: tuple[int, ...], name: str = "") -> None:
    """``ValueError`` unless ``layout`` is known and fits a tensor of ``shape``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    need = 3 if is_stacked(layout) else 2
    if layout != DEFAULT_LAYOUT and len(shape) < need:
        raise ValueError(
            f"layout {layout!r} needs a tensor with at least {need} dimensions; "
            f"{name or 'the parameter'} has shape {shape}"
        )


def matrices(x: Tensor, layout: str) -> list[Tensor]:
    """Views of ``x`` in ``(out, in, ...)`` order: one for a single matrix, one per slice of a
    stacked layout. Writing into a view writes into ``x``."""
    if layout == "out_in":
        return [x]
    if layout == "in_out":
        return [x.transpose(0, 1)]
    if layout == "stacked_out_in":
        return list(x.unbind(0))
    if layout == "stacked_in_out":
        return [m.transpose(0, 1) for m in x.unbind(0)]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def matrix_shape(shape: tuple[int, ...], layout: str) -> tuple[tuple[int, ...], int]:
    """The ``(out, in, ...)`` shape of one matrix of a tensor of ``shape``, and how many."""
    if layout == "out_in":
        return shape, 1
    if layout == "in_out":
        return (shape[1], shape[0], *shape[2:]), 1
    inner = shape[1:]
    if layout == "stacked_in_out":
        inner = (inner[1], inner[0], *inner[2:])
    return inner, shape[0]
