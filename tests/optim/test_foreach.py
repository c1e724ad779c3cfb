"""``ChainOptimizer(foreach=True)`` (multi-tensor element-wise transforms) against the
one-parameter-at-a-time path, the folded final update against the unfolded chain, and the
kernel launches per step the multi-tensor path saves (``bench.speed.ops``).

On CPU, torch's foreach ops loop over the single-tensor kernels, so a transform's
``apply_foreach`` that runs the same operations as its ``apply`` gives the same bits: the
equivalence tests are bit-exact. (On CUDA the foreach kernels round as the single-tensor ones
for the ops used here; that is for the GPU suite to pin.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import orthoptim
from orthoptim import ChainOptimizer
from orthoptim.bench.models import SmallCNN, TinyGPT
from orthoptim.bench.speed import ops
from orthoptim.recipes import adamw, grams, mars_lion, muon, sgd
from orthoptim.registry import REGISTRY
from orthoptim.transforms import AddWeightDecay, Momentum, ScaleByAdam, chain
from orthoptim.transforms.base import Ctx
from orthoptim.transforms.scaling import ScaleByShape
from tests.helpers import closure_of, save_and_load

STEPS = 3


def gpt() -> nn.Module:
    torch.manual_seed(0)
    return TinyGPT(vocab=32, dim=16, depth=1, heads=2, context=8)


def gpt_loss(model: nn.Module, seed: int) -> Tensor:
    batch = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(seed))
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def trained(
    make_model: Callable[[], nn.Module],
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    loss: Callable[[nn.Module, int], Tensor] = gpt_loss,
) -> list[Tensor]:
    model = make_model()
    opt = make_opt(model)
    for seed in range(STEPS):
        opt.step(closure_of(opt, lambda seed=seed: loss(model, seed)))
    return [p.detach().clone() for p in model.parameters()]


def assert_same(got: list[Tensor], want: list[Tensor]) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", [s.name for s in REGISTRY])
def test_foreach_equals_one_at_a_time_for_every_registered_optimizer(name: str) -> None:
    # fast_paths=False: the AdamW route runs its chain, not the fused kernel
    def make(foreach: bool) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: orthoptim.build(name, m, fast_paths=False, foreach=foreach)

    assert_same(trained(gpt, make(True)), trained(gpt, make(False)))


def cnn_loss(model: nn.Module, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("name", ["muon", "sgd", "grams"])
def test_foreach_on_conv_kernels_in_channels_last(name: str) -> None:
    def model() -> nn.Module:
        torch.manual_seed(0)
        return SmallCNN(width=4).to(memory_format=torch.channels_last)

    def make(foreach: bool) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: orthoptim.build(name, m, foreach=foreach, weight_decay=0.1)

    assert_same(trained(model, make(True), cnn_loss), trained(model, make(False), cnn_loss))


class Experts(nn.Module):
    """A stacked ``(n, in, out)`` expert weight next to a plain linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.Parameter(torch.randn(3, 8, 12) / 4)
        self.proj = nn.Linear(12, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.einsum("bi,eio->bo", x, self.experts))


def expert_loss(model: nn.Module, seed: int) -> Tensor:
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))
    return model(x).square().mean()


@pytest.mark.parametrize("batch_by_shape", [False, True])
def test_foreach_with_a_stacked_layout_and_batched_newton_schulz(batch_by_shape: bool) -> None:
    def model() -> nn.Module:
        torch.manual_seed(0)
        return Experts()

    def make(foreach: bool) -> Callable[[nn.Module], torch.optim.Optimizer]:
        recipe = muon(compute_dtype="float32", batch_by_shape=batch_by_shape)
        return lambda m: ChainOptimizer(
            [{"params": [m.experts], "layout": "stacked_in_out"}],
            recipe,
            lr=0.02,
            weight_decay=0.1,
            foreach=foreach,
        )

    got = trained(model, make(True), expert_loss)
    assert_same(got, trained(model, make(False), expert_loss))
    assert not torch.equal(got[0], model().experts)


def test_the_multi_tensor_path_batches_newton_schulz_by_shape_by_default() -> None:
    # three blocks: each hidden shape three times. In float32 the batched iteration rounds as
    # bmm does, within float32 round-off of one matrix at a time; batch_by_shape=False keeps
    # the multi-tensor path bit for bit on the one-at-a-time one.
    def model() -> nn.Module:
        torch.manual_seed(0)
        return TinyGPT(vocab=32, dim=16, depth=3, heads=2, context=8)

    def make(foreach: bool, batch: bool | None) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: orthoptim.build(
            "muon", m, compute_dtype="float32", batch_by_shape=batch, foreach=foreach
        )

    one_at_a_time = trained(model, make(False, None))
    assert_same(trained(model, make(True, False)), one_at_a_time)
    batched = trained(model, make(True, None))
    for a, b in zip(batched, one_at_a_time, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # and it did batch: fewer launches than one matrix at a time
    assert kernels("muon", 3).kernels < kernels("muon", 3, batch_by_shape=False).kernels


@pytest.mark.parametrize("momentum_dtype", ["parameter", "float32"])
@pytest.mark.parametrize("name", ["muon", "sgd", "adamw", "grams", "mars_lion"])
def test_foreach_with_bfloat16_parameters(name: str, momentum_dtype: str) -> None:
    options = {"momentum_dtype": momentum_dtype} if name in ("muon", "sgd") else {}
    if momentum_dtype == "float32" and not options:
        pytest.skip("no momentum buffer of its own")

    def model() -> nn.Module:
        return gpt().to(torch.bfloat16)

    # fast_paths=False: with foreach, 16-bit AdamW routes would take the fused kernel on
    # float32 copies (tests/optim/test_fused.py), not the chain compared here
    def make(foreach: bool) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: orthoptim.build(name, m, foreach=foreach, fast_paths=False, **options)

    assert_same(trained(model, make(True)), trained(model, make(False)))


def test_foreach_option_is_validated() -> None:
    with pytest.raises(
        ValueError, match=r"foreach must be True, False or None \(chosen per device\), got .yes."
    ):
        ChainOptimizer([torch.zeros(2, requires_grad=True)], sgd(), lr=0.1, foreach="yes")
    with pytest.raises(ValueError, match="foreach must be"):
        orthoptim.build("sgd", [torch.zeros(2, requires_grad=True)], foreach=1)


def test_default_is_one_at_a_time_on_cpu_as_torch() -> None:
    def count(**options) -> dict[str, float]:
        def make(m: nn.Module) -> list[torch.optim.Optimizer]:
            return [orthoptim.build("sgd", m, nonfinite="off", **options)]

        return ops.measure("sgd", make, ops.SETS["gpt24"], steps=1).by_op

    default = count()
    assert default == count(foreach=False) != count(foreach=True)


# -- the folded final update ------------------------------------------------------------------


def unfolded(recipe, params: list[Tensor], grads: list[list[Tensor]], lr: float, wd: float):
    """The truth: every transform's own ``apply``, then ``theta <- theta - lr u``."""
    mine = [p.clone() for p in params]
    states = [recipe.init(p) for p in mine]
    for step, gs in enumerate(grads, 1):
        for p, s, g in zip(mine, states, gs, strict=True):
            p.add_(recipe.apply(g.clone(), s, Ctx(step, lr, wd, p, g)), alpha=-lr)
    return mine


def shell(recipe, params, grads, lr: float, wd: float, foreach: bool) -> list[Tensor]:
    ps = [p.clone().requires_grad_() for p in params]
    opt = ChainOptimizer(ps, recipe, lr=lr, weight_decay=wd, fast_paths=False, foreach=foreach)
    for gs in grads:
        for p, g in zip(ps, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps]


SHAPES = [(24, 8), (8, 40), (12, 12, 1, 1)]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "recipe",
    [
        muon(compute_dtype="float32"),
        adamw(),
        grams(),
        mars_lion(),
        chain(Momentum(), ScaleByShape()),
    ],
    ids=["muon", "adamw", "grams", "mars_lion", "shape_scale"],
)
def test_the_fold_equals_the_unfolded_chain_to_round_off(recipe, foreach: bool) -> None:
    """``theta (1 - lr b) - lr a u`` against ``theta - lr (a u + b theta)``: float64, so the
    only difference is the order of a few roundings per step, relative 2^-50 of the
    parameter's size over these steps."""
    torch.manual_seed(3)
    params = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    assert recipe.fold_from < len(recipe.transforms)
    got = shell(recipe, params, grads, 0.01, 0.1, foreach)
    for a, b in zip(got, unfolded(recipe, params, grads, 0.01, 0.1), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2.0**-50 * b.abs().max().item())
    # the fold must have done something: without decay nor scale it is the plain step
    assert any(not torch.equal(a, p) for a, p in zip(got, params, strict=True))


@pytest.mark.parametrize("foreach", [False, True])
def test_nothing_to_fold_is_the_unfolded_chain_bit_for_bit(foreach: bool) -> None:
    # sgd's decay is L2 (before the momentum): nothing trails the momentum, so no fold
    recipe = sgd(momentum=0.9)
    assert recipe.fold_from == len(recipe.transforms)
    torch.manual_seed(4)
    params = [torch.randn(s) for s in SHAPES]
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    got = shell(recipe, params, grads, 0.01, 0.1, foreach)
    assert_same(got, unfolded(recipe, params, grads, 0.01, 0.1))


def test_fold_numbers_follow_the_chain_order_and_the_matrix_layout() -> None:
    p = torch.zeros(3, 8, 2)  # stacked_in_out: three 2 x 8 (out, in) matrices
    c = Ctx(1, 0.1, 0.5, p, p, layout="stacked_in_out")
    assert chain(ScaleByShape(), AddWeightDecay()).folded(c) == (1.0, 0.5)  # rows 2 < cols 8
    tall = Ctx(1, 0.1, 0.5, torch.zeros(32, 8), torch.zeros(32, 8))
    assert chain(ScaleByShape(), AddWeightDecay()).folded(tall) == (2.0, 0.5)
    assert chain(AddWeightDecay(), ScaleByShape()).folded(tall) == (2.0, 1.0)
    assert chain(ScaleByAdam(), AddWeightDecay()).fold_from == 1
    assert chain(AddWeightDecay(), Momentum()).fold_from == 2


def test_the_bfloat16_factor_is_added_without_a_copy_back_and_the_same_bits() -> None:
    """Orthogonalize's bfloat16 factor goes into ``theta - lr u`` as it is (promoted exactly to
    float32), not first copied into the float32 working copy: the same bits, one op fewer."""
    torch.manual_seed(5)
    params = [torch.randn(s) for s in SHAPES[:2]]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    recipe = muon(batch_by_shape=False)  # bfloat16 Newton-Schulz, one matrix at a time
    got = shell(recipe, params, grads, 0.02, 0.0, foreach=True)
    want = [p.clone() for p in params]
    states = [recipe.init(p) for p in want]
    for step, gs in enumerate(grads, 1):
        for p, s, g in zip(want, states, gs, strict=True):
            c = Ctx(step, 0.02, 0.0, p, g)
            u = recipe.apply_range(0, recipe.fold_from, [g.clone()], [s], [c])[0]
            assert u.dtype == torch.float32  # apply casts the factor back
            p.add_(u, alpha=-0.02 * recipe.folded(c)[0])
    assert_same(got, want)


# -- Momentum's buffer dtype --------------------------------------------------------------------


def test_float32_momentum_of_bfloat16_parameters() -> None:
    p = torch.randn(4, 6).bfloat16()
    g = torch.randn(4, 6).bfloat16()
    assert Momentum().init(p)["m"].dtype == torch.bfloat16
    assert Momentum(dtype="float32").init(p)["m"].dtype == torch.float32
    assert Momentum(dtype="float32").init(p.double())["m"].dtype == torch.float64
    for kind in ("ema", "sum"):
        for nesterov in (False, True):
            t = Momentum(beta=0.9, kind=kind, nesterov=nesterov, dtype="float32")
            state = t.init(p)
            state["m"].copy_(torch.randn(4, 6))
            m = state["m"].clone()
            out = t.apply(g.clone(), state, Ctx(1, 0.1, 0.0, p, g))
            # the same update in float32, rounded once at the end
            g32 = g.float()
            m = m.lerp(g32, 0.1) if kind == "ema" else m * 0.9 + g32
            look = (g32.lerp(m, 0.9) if kind == "ema" else g32 + 0.9 * m) if nesterov else m
            assert out.dtype == torch.bfloat16
            assert torch.equal(state["m"], m)
            assert torch.equal(out, look.bfloat16())


def test_momentum_dtype_is_validated_and_shown_only_when_not_the_default() -> None:
    with pytest.raises(
        ValueError, match=r"momentum_dtype must be one of \('parameter', 'float32'\)"
    ):
        Momentum(dtype="float64")  # type: ignore[arg-type]
    assert "dtype" not in repr(Momentum())  # checkpoints written before the option still load
    assert "dtype='float32'" in repr(muon(momentum_dtype="float32"))
    assert sgd(momentum_dtype="float32").transforms[1].dtype == "float32"


def test_float32_momentum_survives_a_checkpoint() -> None:
    def model() -> nn.Module:
        return gpt().to(torch.bfloat16)

    m = model()
    opt = orthoptim.build("muon", m, momentum_dtype="float32")
    gpt_loss(m, 0).backward()
    opt.step()
    saved = save_and_load(m, opt)
    fresh = model()
    fresh.load_state_dict(saved["model"])
    resumed = orthoptim.build("muon", fresh, momentum_dtype="float32")
    resumed.load_state_dict(saved["opt"])
    buffers = [s["momentum.m"] for s in resumed.state.values() if "momentum.m" in s]
    assert buffers and all(b.dtype == torch.float32 for b in buffers)
    before = [s["momentum.m"] for s in opt.state.values() if "momentum.m" in s]
    assert all(torch.equal(a, b) for a, b in zip(before, buffers, strict=True))
    with pytest.raises(ValueError, match="different optimizer"):
        orthoptim.build("muon", model()).load_state_dict(saved["opt"])


# -- kernel launches per step ------------------------------------------------------------------


def kernels(name: str, depth: int, **options) -> ops.StepOps:
    def make(m: nn.Module) -> list[torch.optim.Optimizer]:
        return [orthoptim.build(name, m, nonfinite="off", foreach=True, **options)]

    return ops.measure(name, make, depth, steps=1)


@pytest.mark.parametrize("set_name", ["gpt24", "gpt200"])
def test_muon_launches_no_more_kernels_than_torch_muon_with_foreach_adamw(set_name: str) -> None:
    """nonfinite="off": torch's optimizers do not check. Newton-Schulz batched by shape, the
    multi-tensor path's default (``Orthogonalize(batch_by_shape=None)``)."""
    depth = ops.SETS[set_name]
    ours = kernels("muon", depth)
    theirs = ops.measure("torch", ops.torch_muon_adamw, depth, steps=1)
    print(f"{set_name}: muon foreach {ours.kernels}, torch Muon + AdamW(foreach) {theirs.kernels}")
    assert ours.kernels <= theirs.kernels


@pytest.mark.parametrize("name", ["sgd", "grams", "adamw"])
def test_element_wise_chains_launch_a_constant_number_of_kernels(name: str) -> None:
    """The same kernels on 65 and 205 parameters (a per-parameter ``add_``, such as a step
    counter incremented one at a time, is allowed at most once per parameter)."""
    small = kernels(name, ops.SETS["gpt24"], fast_paths=False)
    large = kernels(name, ops.SETS["gpt200"], fast_paths=False)
    chain_small = {k: v for k, v in small.by_op.items() if k != "aten.add_"}
    chain_large = {k: v for k, v in large.by_op.items() if k != "aten.add_"}
    assert chain_small == chain_large
    assert large.by_op.get("aten.add_", 0) - small.by_op.get("aten.add_", 0) <= 205 - 65
    # a few kernels per transform and param group (TinyGPT's: one per route and role), plus
    # the working copies, the final update and the step counters
    opt = orthoptim.build(name, TinyGPT(depth=1))
    transforms = max(len(r.chain.transforms) for r in opt.plan.routes)
    assert sum(chain_large.values()) <= (5 * transforms + 3) * len(opt.param_groups)
