"""``damping_rule="gradient_normalized"`` of mfac and efcp (Semenov, Jaggi, Doikov 2025, arXiv
2506.13710, Algorithm 1 with ``gamma = 1 / damping`` fixed: ``lambda_t = damping ||g_t||``).

Oracles: the rule equals the constant path run with the damping computed by hand from each
step's gradient norm (transform level, per block: a parameter, or the whole route with
``blocks="model"``), and mfac equals the dense float64 oracle of tests/recipes/test_mfac.py with
that damping; the default ("constant") is unchanged, its repr included (old checkpoints load);
a zero gradient makes a zero step; and both train.
"""

from __future__ import annotations

import pytest
import torch

import orthoptim
from orthoptim.bench.speed import ops
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.efcp import EfcpPrecondition
from orthoptim.transforms.mfac import MFacPrecondition
from tests.helpers import fixed_grads
from tests.recipes.teacher_student import ill_conditioned, random_teacher, train
from tests.recipes.test_mfac import MfacOracle

SHAPES = [(6, 5), (7,)]
STEPS = 11
COEFFICIENT = 0.05


def by_hand(grads: list[torch.Tensor]) -> float:
    """``COEFFICIENT * ||g||`` over a block's pieces, in float64 on the host."""
    return COEFFICIENT * sum(float(g.double().square().sum()) for g in grads) ** 0.5


def run_both(make, blocks: str, dtype: torch.dtype) -> float:  # type: ignore[no-untyped-def]
    """Worst difference between the rule and the constant path at the hand-computed damping,
    ``STEPS`` steps on two parameters."""
    rule = make(damping=COEFFICIENT, damping_rule="gradient_normalized", blocks=blocks)
    params = [torch.randn(s, dtype=dtype) for s in SHAPES]
    states_rule = [rule.init(p) for p in params]
    states_constant = [rule.init(p) for p in params]
    grads = [fixed_grads(s, STEPS, dtype, seed=i + 3) for i, s in enumerate(SHAPES)]
    worst = 0.0
    for t in range(STEPS):
        gs = [g[t] for g in grads]
        cs = [Ctx(t + 1, 0.1, 0.0, p, g) for p, g in zip(params, gs, strict=True)]
        ours = rule.apply_many([g.clone() for g in gs], states_rule, cs)
        if blocks == "model":
            constant = make(damping=by_hand(gs), blocks=blocks)
            expected = constant.apply_many([g.clone() for g in gs], states_constant, cs)
        else:
            expected = [
                make(damping=by_hand([g]), blocks=blocks).apply(g.clone(), s, c)
                for g, s, c in zip(gs, states_constant, cs, strict=True)
            ]
        for a, b in zip(ours, expected, strict=True):
            worst = max(worst, float(((a - b).abs() / b.abs().amax()).amax()))
    return worst


@pytest.mark.parametrize("blocks", ["parameter", "model"])
@pytest.mark.parametrize(
    "make",
    [
        MFacPrecondition,
        lambda **kw: EfcpPrecondition(window=4, density=0.3, **kw),
        lambda **kw: EfcpPrecondition(window=4, compression="lowrank", rank=2, **kw),
    ],
    ids=["mfac", "efcp_topk", "efcp_lowrank"],
)
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_equals_the_constant_path_at_the_damping_computed_by_hand(make, blocks, dtype, rtol):  # type: ignore[no-untyped-def]
    """Relative to each step's largest entry; float64 1e-12, float32 1e-5 (the rule's norm is
    taken in float64 on the device, by hand on the host: the same number to round-off)."""
    worst = run_both(make, blocks, dtype)
    print(f"{blocks} {dtype}: {worst:.3g}")
    assert worst <= rtol


def test_the_comparison_can_fail() -> None:
    """A damping off by 10% is seen: the rule is not the constant path at ``COEFFICIENT``."""
    p, g = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    rule = MFacPrecondition(damping=COEFFICIENT, damping_rule="gradient_normalized")
    off = MFacPrecondition(damping=1.1 * by_hand([g]))
    c = Ctx(1, 0.1, 0.0, p, g)
    a = rule.apply(g.clone(), rule.init(p), c)
    b = off.apply(g.clone(), off.init(p), c)
    assert (a - b).abs().max() > 1e-6 * b.abs().max()


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_mfac_equals_the_dense_oracle_with_the_gradient_normalized_damping(momentum) -> None:  # type: ignore[no-untyped-def]
    """The paper's step ``(lambda_t I + F)^{-1} g_t`` with ``lambda_t = c ||g_t||`` (``g_t``
    with the L2 term, as the window holds it), dense float64, window 4 over 25 steps."""
    shape = (6, 5)
    p0 = torch.randn(shape, dtype=torch.float64)
    a = p0.clone().requires_grad_()
    opt = orthoptim.build(
        "mfac",
        [a],
        lr=0.01,
        weight_decay=0.1,
        window=4,
        damping=COEFFICIENT,
        momentum=momentum,
        damping_rule="gradient_normalized",
    )
    oracle = MfacOracle(a.detach(), lr=0.01, wd=0.1, window=4, damping=0.0, momentum=momentum)
    worst = 0.0
    for g in fixed_grads(shape, 25, torch.float64):
        oracle.damping = COEFFICIENT * float((g + 0.1 * oracle.p).norm())
        a.grad = g.clone()
        opt.step()
        worst = max(worst, (a.detach() - oracle.step(g)).abs().max().item())
    print(f"momentum={momentum}: {worst:.3g}")
    assert worst <= 1e-12


def test_constant_stays_the_default_and_its_repr_is_unchanged() -> None:
    assert orthoptim.registry.get("mfac").options()["damping_rule"] == "constant"
    assert orthoptim.registry.get("efcp").options()["damping_rule"] == "constant"
    expected = "MFacPrecondition(window=16, damping=0.001, blocks='parameter')"
    assert repr(MFacPrecondition()) == expected
    assert "damping_rule='gradient_normalized'" in repr(
        EfcpPrecondition(damping_rule="gradient_normalized")
    )
    with pytest.raises(ValueError, match="damping_rule must be one of"):
        MFacPrecondition(damping_rule="gradient")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mfac", "efcp"])
@pytest.mark.parametrize("blocks", ["parameter", "model"])
def test_zero_gradients_make_a_zero_step(name: str, blocks: str) -> None:
    ps = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    before = [p.detach().clone() for p in ps]
    opt = orthoptim.build(name, ps, damping_rule="gradient_normalized", blocks=blocks)
    for _ in range(3):
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt.step()
    for p, b in zip(ps, before, strict=True):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize("problem", [ill_conditioned, random_teacher])
@pytest.mark.parametrize(("name", "coefficient"), [("mfac", 1e-2), ("efcp", 1e-1)])
def test_trains(problem, name: str, coefficient: float) -> None:  # type: ignore[no-untyped-def]
    """120 full-batch steps at the registry's lr, ``damping`` as the coefficient ``c`` of
    ``lambda_t = c ||g_t||``. Measured final losses, first 1.010 (ill-conditioned) and 0.219
    (random teacher): mfac c = 1e-3 / 1e-2 / 1e-1: 0.079 / 0.052 / 0.142 and 0.0144 / 0.0029 /
    0.0038, against the constant default's 0.074 and 0.0037; efcp: 1.02 / 0.252 / 0.202 and
    0.342 / 0.176 / 0.0166, against 0.215 and 0.0177 (its window holds compressed rows, 1% of
    the entries, so the same ``c`` damps it far more relative to its curvature: efcp wants the
    larger coefficient). The bounds: a quarter of the first loss and 1.5x the constant path's."""
    options = {"damping_rule": "gradient_normalized", "damping": coefficient}
    losses = train(name, 120, problem=problem, options=options)
    constant = train(name, 120, problem=problem)[-1]
    print(problem.__name__, name, losses[0], losses[-1], constant)
    assert losses[-1] < 0.25 * losses[0]
    assert losses[-1] < 1.5 * constant


@pytest.mark.parametrize("name", ["mfac", "efcp"])
@pytest.mark.parametrize("blocks", ["parameter", "model"])
def test_the_gradient_norm_stays_on_the_device(name: str, blocks: str) -> None:
    """No host read in the step (``nonfinite="off"``, tests/optim/test_host_reads.py's count),
    over a window's wrap."""

    def build(model: torch.nn.Module) -> list[torch.optim.Optimizer]:
        options = {"damping_rule": "gradient_normalized", "blocks": blocks, "window": 3}
        return [orthoptim.build(name, model, nonfinite="off", **options)]

    assert ops.measure(name, build, depth=2, steps=5, warmup=0).host_reads == 0
