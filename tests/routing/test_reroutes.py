"""MKOR never pretends: layers its hooks cannot see go to AdamW, and ``describe`` says why."""

from __future__ import annotations

import torch
from torch import nn

import orthoptim


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.lstm(h)[0]
        return self.head(torch.relu(self.mlp(h)))


def test_uncapturable_layers_are_rerouted_with_the_reason() -> None:
    model = Mixed()
    for name in ("mkor", "mkor_h", "spd_momentum"):
        opt = orthoptim.build(name, model)
        route = {n: (g["route"], g.get("note")) for g in opt.param_groups for n in g["param_names"]}
        assert route["mlp.weight"] == (name, None)
        for moved in ("attn.in_proj_weight", "attn.out_proj.weight", "lstm.weight_hh_l0"):
            assert route[moved][0] == "adamw" and route[moved][1], moved
        assert route["emb.weight"] == ("adamw", None)  # an embedding's route anyway: no note
        table = opt.describe()
        assert "MultiheadAttention" in table and "LSTM" in table
        tokens = torch.randint(0, 10, (2, 5))
        for _ in range(2):
            opt.zero_grad()
            model(tokens).square().mean().backward()
            opt.step()
        eye = torch.eye(8)
        factor = "spd.C" if name == "spd_momentum" else f"{name}.L_inv"  # the output side
        assert not torch.equal(opt.state[model.mlp.weight][factor], eye)
        for c in opt.plan.routes[0].chain.transforms:
            if hasattr(c, "capture"):
                c.capture.remove()
