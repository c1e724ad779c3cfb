"""What the trainer tests share: a tiny language model, the end state of a run and its exact
comparison, a rank's ``torchrun`` environment and a clean Accelerate state (the HF Trainer runs
on Accelerate too)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from tests.distributed.harness import WORLD

VOCAB = 32


class TinyLM(nn.Module):
    """An embedding, two hidden matrices, a norm and an untied head: every routing role."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        h = h + self.fc2(torch.tanh(self.fc1(h)))
        return self.head(self.norm(h))


def next_token_loss(model: nn.Module, ids: Tensor) -> Tensor:
    logits = model(ids[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def end_state(
    named_parameters: Iterable[tuple[str, Tensor]], opt_state: dict[str, Any], lr: list[Any]
) -> dict[str, Any]:
    """Copies of what an exact resume must reproduce: parameters, optimizer state, lr."""
    return {
        "params": {n: p.detach().clone() for n, p in named_parameters},
        "opt": flatten(opt_state),
        "lr": list(lr),
    }


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested state dict as ``{path: leaf}``."""
    if isinstance(tree, dict):
        items: Any = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}/{k}"))
    return out


def assert_same_end(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Bit-identical parameters and optimizer state, equal lr (``end_state``)."""
    for part in ("params", "opt"):
        assert got[part].keys() == want[part].keys(), f"{part}: keys differ"
        for k, w in want[part].items():
            g = got[part][k]
            same = torch.equal(g, w) if isinstance(w, Tensor) else g == w
            assert same, f"{part}: {k} differs"
    assert got["lr"] == want["lr"], f"lr {got['lr']} != {want['lr']}"


def launched_env(rank: int) -> None:
    """What ``torchrun`` sets for a rank of a one-node job (the ranks' process group, from
    the harness, is already up: the trainer libraries use it as it is)."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD), GROUP_RANK="0", ROLE_RANK=str(rank),
        TORCHELASTIC_RUN_ID="orthoptim-tests", OMP_NUM_THREADS="1",
    )  # fmt: skip


def fresh_state() -> None:
    """Accelerate keeps its state per process; each Accelerator or Trainer after this starts
    from nothing."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
