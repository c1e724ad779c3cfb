"""GPT-2's ``Conv1D`` stores its weight ``(in, out)``: the optimizer must read it as the
transposed ``(out, in)`` matrix of the ``nn.Linear`` it stands for.

A tiny GPT-2 and its twin with every ``Conv1D`` replaced by an ``nn.Linear`` holding the
transposed weight (same values, same data) must train the same: one step moves each ``Conv1D``
weight by the transpose of its twin's move, and 50 steps end at the same loss.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import orthoptim

pytest.importorskip("transformers")

from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from tests.integrations.zoo import gpt2_config

VOCAB, BATCH, SEQ, STEPS, N_BATCHES = 128, 8, 32, 50, 4
OPTIMIZERS = ("muon", "normuon")


def conv1d_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, Conv1D)]


def gpt2_and_linear_twin() -> tuple[nn.Module, nn.Module]:
    """A seeded tiny GPT-2 and a copy whose ``Conv1D`` layers are ``nn.Linear`` twins."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config(vocab=VOCAB, n_positions=64, n_embd=64))
    twin = copy.deepcopy(model)
    for name in conv1d_names(twin):
        conv = twin.get_submodule(name)
        parent_name, _, attr = name.rpartition(".")
        n_in, n_out = conv.weight.shape
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            linear.bias.copy_(conv.bias)
        setattr(twin.get_submodule(parent_name), attr, linear)
    assert not conv1d_names(twin)
    return model, twin


def batches() -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (BATCH, SEQ), generator=g) for _ in range(N_BATCHES)]


def lm_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss


def conv1d_weights(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n in conv1d_names(model)]


def test_the_twin_computes_the_same_function() -> None:
    model, twin = gpt2_and_linear_twin()
    names = conv1d_weights(model)
    assert len(names) == 8
    params, twin_params = dict(model.named_parameters()), dict(twin.named_parameters())
    assert list(params) == list(twin_params)
    for n in names:
        assert params[n].shape == twin_params[n].shape[::-1]
        assert torch.equal(params[n], twin_params[n].T)
    ids = batches()[0]
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, twin(input_ids=ids).logits, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_step_moves_conv1d_by_the_transposed_linear_update(name: str) -> None:
    model, twin = gpt2_and_linear_twin()
    ids = batches()[0]
    moves = []
    for m in (model, twin):
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        opt = orthoptim.build(name, m)
        lm_loss(m, ids).backward()
        opt.step()
        moves.append({n: p.detach() - before[n] for n, p in m.named_parameters()})
    move, twin_move = moves
    for n in conv1d_weights(model):
        want = twin_move[n].T
        assert want.norm() > 0, n
        rel = ((move[n] - want).norm() / want.norm()).item()
        assert rel < 1e-5, f"{name}: {n} moved {rel:.3g} (relative) away from its Linear twin"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fifty_steps_reach_the_same_loss(name: str) -> None:
    model, twin = gpt2_and_linear_twin()
    data = batches()
    final = []
    for m in (model, twin):
        opt = orthoptim.build(name, m)
        for step in range(STEPS):
            opt.zero_grad(set_to_none=True)
            lm_loss(m, data[step % len(data)]).backward()
            opt.step()
        with torch.no_grad():
            final.append(sum(lm_loss(m, ids).item() for ids in data) / len(data))
    conv_loss, linear_loss = final
    start = torch.log(torch.tensor(float(VOCAB))).item()
    assert linear_loss < 0.9 * start, f"{name} did not train: {linear_loss:.3f}"
    # The issue asks for 2%; the layouts make the two runs equal to round-off, and with the
    # layout ignored they differ by about 2% (muon) to 5% (normuon), so hold them to 0.1%.
    assert abs(conv_loss - linear_loss) <= 1e-3 * linear_loss, (
        f"{name}: Conv1D GPT-2 ends at {conv_loss:.4f}, its Linear twin at {linear_loss:.4f}"
    )
