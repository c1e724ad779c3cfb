"""``build(..., telemetry_every=N)`` and ``opt.telemetry()`` (``orthoptim.telemetry``): the
figures equal hand-computed ones, are measured only every N steps, change nothing in the
update, cost nothing when off, and read nothing on the host inside a step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from orthoptim import registry
from orthoptim.bench.speed import ops
from orthoptim.functional.coefficients import resolve_preset
from orthoptim.functional.polar import newton_schulz, polar_health
from orthoptim.telemetry import flat
from tests.integrations.common import TinyLM, next_token_loss

LR = 0.02


def batch(seed: int) -> Tensor:
    return torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(seed))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, first: int = 0) -> None:
    for i in range(first, first + steps):
        opt.zero_grad()
        next_token_loss(model, batch(i)).backward()
        opt.step()


def model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


def test_the_figures_equal_hand_computed_ones() -> None:
    m = model()
    opt = registry.build("muon", m, lr=LR, weight_decay=0.1, telemetry_every=1)
    train(m, opt, 2)
    opt.zero_grad()
    next_token_loss(m, batch(7)).backward()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    opt.step()
    report = opt.telemetry()
    assert report["step"] == 3
    params = dict(m.named_parameters())
    for name, p in params.items():
        d = p.detach() - before[name]
        got = report["params"][name]
        assert got["update_rms"] == pytest.approx(d.square().mean().sqrt().item(), rel=1e-5)
        assert got["update_ratio"] == pytest.approx(
            (d.norm() / before[name].norm()).item(), rel=1e-5
        )
        assert got["grad_norm"] == pytest.approx(grads[name].norm().item(), rel=1e-5)
    # Muon's shape scale sqrt(max(1, out / in)) on the matrices; AdamW's lr on the rest
    adamw_lr = opt.param_groups[-1]["lr"] * opt.param_groups[-1]["lr_scale"]
    assert report["params"]["fc1.weight"]["effective_lr"] == pytest.approx(LR * math.sqrt(24 / 16))
    assert report["params"]["fc2.weight"]["effective_lr"] == pytest.approx(LR)
    assert report["params"]["head.weight"]["effective_lr"] == pytest.approx(adamw_lr)
    matrices = ["fc1.weight", "fc2.weight"]
    d_sq = sum((params[n].detach() - before[n]).square().sum().item() for n in matrices)
    p_sq = sum(before[n].square().sum().item() for n in matrices)
    g_sq = sum(grads[n].square().sum().item() for n in matrices)
    size = sum(params[n].numel() for n in matrices)
    route = report["routes"]["muon"]
    assert route["update_rms"] == pytest.approx(math.sqrt(d_sq / size), rel=1e-5)
    assert route["update_ratio"] == pytest.approx(math.sqrt(d_sq / p_sq), rel=1e-5)
    assert route["grad_norm"] == pytest.approx(math.sqrt(g_sq), rel=1e-5)
    assert route["lr"] == pytest.approx(LR)
    # only the orthogonalized route reports the Newton-Schulz health
    for name in matrices:
        assert 0.5 < report["params"][name]["polar_min"] <= report["params"][name]["polar_max"]
    assert "polar_min" not in report["params"]["head.weight"]
    assert "polar_min" not in report["routes"]["adamw"]
    assert route["polar_max"] == max(report["params"][n]["polar_max"] for n in matrices)


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
def test_a_measured_step_is_the_same_step(foreach: bool) -> None:
    """Telemetry never changes the update, on the fused AdamW route and Muon's, either path."""
    runs = []
    for every in (None, 1):
        m = model()
        opt = registry.build("muon", m, lr=LR, foreach=foreach, telemetry_every=every)
        train(m, opt, 3)
        runs.append((m.state_dict(), opt.state_dict()["state"]))
    (p0, s0), (p1, s1) = runs
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
    for i in s0:
        for k in s0[i]:
            assert torch.equal(s0[i][k], s1[i][k]), (i, k)


def test_measured_every_n_steps_only() -> None:
    m = model()
    opt = registry.build("muon", m, lr=LR, telemetry_every=3)
    train(m, opt, 2)
    assert opt.telemetry() == {"step": None, "routes": {}, "params": {}}
    train(m, opt, 1, first=2)
    third = copy.deepcopy(opt.telemetry())
    assert third["step"] == 3
    train(m, opt, 2, first=3)
    assert opt.telemetry() == third  # steps 4 and 5 are not measured
    train(m, opt, 1, first=5)
    assert opt.telemetry()["step"] == 6
    assert opt.telemetry() != third


def test_off_adds_no_op_and_a_measured_step_reads_nothing() -> None:
    def make(every: int | None):
        return lambda model: [registry.build("muon", model, nonfinite="off", telemetry_every=every)]

    off = ops.measure("muon", make(None), depth=2, steps=2)
    unmeasured = ops.measure("muon", make(1000), depth=2, steps=2)
    measured = ops.measure("muon", make(1), depth=2, steps=2)
    assert unmeasured.by_op == off.by_op
    assert measured.kernels > off.kernels  # the count sees the telemetry's work
    assert measured.host_reads == off.host_reads == 0


def test_copies_and_resumes_measure_the_same_steps() -> None:
    m = model()
    opt = registry.build("muon", m, lr=LR, telemetry_every=2)
    train(m, opt, 3)
    saved = copy.deepcopy(opt.state_dict())  # torch loads same-device tensors without a copy
    twin = copy.deepcopy(opt)
    assert twin.telemetry() == opt.telemetry()
    m2 = model()
    m2.load_state_dict(m.state_dict())
    resumed = registry.build("muon", m2, lr=LR, telemetry_every=2)
    resumed.load_state_dict(saved)
    train(m, opt, 1, first=3)
    train(m2, resumed, 1, first=3)
    assert resumed.telemetry()["step"] == opt.telemetry()["step"] == 4
    assert resumed.telemetry() == opt.telemetry()


def test_saved_state_matches_an_optimizer_without_telemetry() -> None:
    runs = []
    for every in (None, 1):
        m = model()
        opt = registry.build("muon", m, lr=LR, telemetry_every=every)
        train(m, opt, 1)
        runs.append(opt.state_dict())
    assert runs[0].keys() == runs[1].keys()
    assert runs[0]["param_groups"] == runs[1]["param_groups"]


def test_refusals() -> None:
    with pytest.raises(ValueError, match="telemetry is off"):
        registry.build("muon", model()).telemetry()
    with pytest.raises(ValueError, match="telemetry_every must be"):
        registry.build("muon", model(), telemetry_every=-1)
    with pytest.raises(ValueError, match="capturable"):
        registry.build("muon", model(), capturable=True, telemetry_every=1)


def test_polar_health_of_exact_and_newton_schulz_factors() -> None:
    g = torch.randn(48, 96, generator=torch.Generator().manual_seed(1))
    exact = torch.linalg.qr(g.mT).Q.mT  # orthonormal rows
    low, high, deviation = polar_health(exact).tolist()
    assert low == pytest.approx(1.0, abs=1e-5) and high == pytest.approx(1.0, abs=1e-5)
    assert deviation < 1e-5
    preset = resolve_preset("keller_quintic", 48, 96)
    ns = newton_schulz(g, preset.schedule(5), norm_safety=preset.norm_safety).float()
    sigma = torch.linalg.svdvals(ns)
    low, high, deviation = polar_health(ns).tolist()
    assert sigma.min() - 1e-5 <= low <= high <= sigma.max() + 1e-5
    true = ((ns @ ns.mT - torch.eye(48)).norm() / math.sqrt(48)).item()
    assert true / 2 < deviation < true * 2  # an 8-column sketch's estimate
    assert polar_health(ns.mT).tolist() == pytest.approx([low, high, deviation])


def test_flat_tags() -> None:
    m = model()
    opt = registry.build("muon", m, lr=LR, telemetry_every=1)
    assert flat(opt.telemetry()) == {}
    train(m, opt, 1)
    tags = flat(opt.telemetry())
    assert "telemetry/muon/update_rms" in tags
    assert "telemetry/muon/polar_deviation" in tags
    assert "telemetry/param/fc1.weight/effective_lr" in tags
    assert not any("/param/" in k for k in flat(opt.telemetry(), per_parameter=False))


def test_refused_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshots would see only this rank's owners' work: refused, saying so."""
    from orthoptim import optim

    monkeypatch.setattr(optim, "detect", lambda *args: object())
    with pytest.raises(ValueError, match="distributed"):
        registry.build("muon", model(), telemetry_every=1)


@pytest.mark.parametrize("name", [n for n in registry.names() if not registry.get(n).needs_closure])
def test_every_registered_optimizer_measures_without_changing_its_step(name: str) -> None:
    """Whatever path a route takes (fused, route-wide, hooked, one tensor at a time)."""
    runs = []
    for every in (None, 1):
        m = model()
        opt = registry.build(name, m, telemetry_every=every)
        train(m, opt, 2)
        runs.append((m, opt))
    (m0, _), (m1, opt) = runs
    for (n, p0), p1 in zip(m0.named_parameters(), m1.parameters(), strict=True):
        assert torch.equal(p0, p1), n
    report = opt.telemetry()
    assert report["step"] == 2
    assert report["params"].keys() == {n for n, _ in m1.named_parameters()}
    for figures in report["params"].values():
        assert all(math.isfinite(v) for v in figures.values())
