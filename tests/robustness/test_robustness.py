"""Registry-driven robustness: bad configuration, bad gradients, degenerate inputs, checkpoints.

Every registered optimizer is covered; a new recipe option must get an entry in
``INVALID_OPTIONS`` (the test fails otherwise), so nothing joins the registry unchecked.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import orthoptim
import orthoptim.nonfinite
from orthoptim import NonFiniteGradientError
from orthoptim.registry import REGISTRY
from tests.helpers import loss, mlp, step_all, step_on, straight_and_resumed

NAMES = [spec.name for spec in REGISTRY]

# option name -> values that must be refused at construction (ValueError or TypeError).
INVALID_OPTIONS: dict[str, list[object]] = {
    "precond_lr": [0.0, -0.1, math.nan, math.inf],
    "curvature": ["hessian", "", None],
    "whiten": ["grad", None],
    "rank": [0, -1, 1.5, True, "10"],
    "step_normalizer": ["3rd", "", None],
    "precond_init_scale": [0.0, -1.0, math.nan, math.inf, "1"],
    "update_rule": ["random", ""],
    "update_order": ["first", None],
    "prob_max": [0.0, 1.5, -0.1, math.nan],
    "prob_min": [0.0, -0.1, math.nan],
    "prob_decay": [-0.001, math.nan, math.inf],
    "prob_flat_start": [1.5, "500", True],
    "balance_prob": [-0.01, 1.5, math.nan],
    "max_size_triangular": [0, -1, 1.5, True],
    "memory_save_mode": [None, "one", "all"],
    "clip_rms": [0.0, -1.0, math.nan],
    "seed": [1.5, "0", True],
    "geometry": ["QEQ", "eq", None],
    "lipschitz_beta": [1.0, -0.1, math.nan],
    "momentum": [-0.1, 1.0, 1.5, math.nan, math.inf, "0.9"],
    "nesterov": ["yes", 1, None],
    "momentum_dtype": ["float64", "bfloat16", None],
    "batch_by_shape": ["yes", 1, "auto"],
    "betas": [(0.9, 1.0), (-0.1, 0.99), (0.9,), (math.nan, 0.9), [0.9, 0.99]],
    "eps": [0.0, -1e-8, math.nan, math.inf],
    "coeffs": ["newtonschulz5", "", "KELLER_QUINTIC"],
    "ns_steps": [0, -1, 1.5, True],
    "pre_norm": ["spectral", ""],
    "compute_dtype": ["half", "fp32", torch.float32],
    "shape_scale": ["sqrt", "spectral_unclamped"],
    "hidden": ["muon", 0.9],
    "adamw_lr_scale": [0.0, -1.0, math.nan, math.inf],
    "adamw_lr": [0.0, -1.0, math.nan, math.inf],
    "adamw_weight_decay": [-0.1, math.nan, math.inf],
    "adamw_betas": [(0.9, 1.0), (1.0, 0.9)],
    "adamw_eps": [0.0, -1.0, math.nan],
    "beta2": [-0.1, 1.0, math.nan, "0.95"],
    "normalize_neurons": ["yes", 1, None],
    "gamma": [-1.0, math.nan, math.inf, "1.5"],
    "normalize": ["yes", 1, None],
    # -- options of Muon's normalisation variants (NorMuon, AuON) --
    "clip_quantile": [0.0, -0.5, 1.5, math.nan, "0.9", None],
    "clip_estimate": ["sample", "", None, 65536],
    "factor_beta": [-0.1, 1.5, math.nan, "0.95"],
    "damping": [0.0, -1.0, math.nan, math.inf],
    "factor_stats": ["fisher", "", None],
    "root_every": [0, -1, 2.5, True],
    "noise_beta": [-0.1, 1.0, math.nan, "0.9"],
    "noise_reference": ["median", "", None],
    "nuclear_norm": ["svd", "", None],
    # -- options of ROOT, FISMO and the noise-adaptive Muon --
    "shampoo_beta": [-0.1, 1.0, math.nan, "0.95"],
    "precondition_every": [0, -1, 2.5, True],
    "max_precond_dim": [0, -1, 2.5, True],
    "correct_bias": ["yes", 1, None],
    "factor_dtype": ["half", "", None, torch.float32],
    "refresh_schedule": ["stagger", "", None],
    "matmul_dtype": ["bf16", "float16", "", None, torch.bfloat16],
    "root": [0.0, -2.0, math.nan, math.inf, "4"],
    "grafting": ["adagrad", "", None],
    "graft_beta2": [-0.1, 1.0, math.nan, "0.999"],
    "graft_eps": [0.0, -1e-8, math.nan, math.inf],
    # -- Kronecker family options (Shampoo, SOAP) --
    "stabilization": [0.0, -0.1, 1.5, math.nan, "0.1"],
    "stabilize_above": [0.0, -1.0, math.nan, math.inf],
    "stats_clip": [0.0, -1.0, math.nan, math.inf],
    "inverse_update": ["momentum", "", None],
    "switch_warmup": [0, -1, 1.5, True],
    "switch_ratio": [-0.1, 1.0, math.nan, "0.1"],
    "switch_beta": [-0.1, 1.0, math.nan, "0.9"],
    # -- activation-Kronecker family options (MKOR, MKOR-H) --
    "window": [0, -1, 1.5, True, "16"],
    "blocks": ["layer", "", None, "Model"],
    "compression": ["svd", "", None, "TopK"],
    "density": [0.0, -0.1, 1.5, math.nan, math.inf, True],
    # -- M-FAC options (damping_rule: below) --
    "clip": [0.0, -1.0, math.nan, math.inf, "1"],
    "variant": ["approx", "", None],
    "first_step": ["zero", "", None],
    # -- MARS family options --
    "eps_placement": ["before_debias", "", None],
    "delta": [0.0, -0.1, math.nan, math.inf, "0.1"],
    "wd_ratio": [-0.1, 1.5, math.nan, "0.1"],
    "dampening": [-0.1, 1.0, math.nan, "0"],
    "project_buffer": ["yes", 1, None],
    # -- sign and projection family options (Grams, AdamP, SGDP) --
    "projection": ["SVD", "fft", "", None],
    "block_order": ["DESCENDING", "reverse", "", None],
    "rank_fraction": [0.0, -0.25, 1.5, math.nan, "0.25", True],
    "update_every": [0, -1, 2.5, True],
    "scale": [0.0, -1.0, math.nan, math.inf, "1"],
    "refresh_moments": ["zero", "", None],
    "residual": ["signsgd", "adam", None],
    "residual_scale": [-1.0, math.nan, math.inf],
    # -- low-rank family options (FRUGAL, low-rank AdamW) --
    "structure": ["Dense", "block", "", None],
    "riemannian_momentum": [-0.1, 1.0, math.nan, "0.5"],
    "lr_cov": [0.0, -0.01, math.nan, math.inf, "0.01"],
    "cov_warmup": ["linear", "", None],
    # -- SPD-submanifold options (spd_momentum) --
    "clusters": [0, -1, 1.5, True, "4"],
    "nu": [-0.1, 1.0, math.nan, "0.7"],
    "assignment": ["labels", "", None],
    # -- Discover options (more_momentum; base: below) --
    "alpha": [-0.1, math.nan, math.inf, "0.1"],
    "beta": [-0.1, math.nan, math.inf, "0.9"],
    "sigma": [-0.1, 1.0, math.nan, "0.999"],
    "decay_point": ["decay", "", None],
    "prediction": ["Extrapolation", "", None],
    "extrapolation_reg": [0.0, -1.0, math.nan, math.inf, "1e-3"],
    "lookahead_momentum": ["prev", "", None],
    "convention": ["Paper", "", None],
    "second_moment": ["prediction", "", None],
    "initial_velocity": ["uniform", "", None],
    "schedule_origin": ["1", 1, "", None],
    # -- first-order options of issue 21 (innaprop, optimistic_amsgrad, gravity) --
    "xi": [-0.1, math.nan, math.inf, "0.1"],
    "metric_beta": [-0.1, 1.0, math.nan, "0.8"],
    "scope": ["layer", "", None, "Model"],
    "inverse": ["dense", "", None],
    "place": ["input", "", None],
    "base": ["lion", "adam", "SGD", "", None, 3],
    "graph": ["log", "", None],
    # -- induced-metric options (induced_metric) --
    "warmup": [0, -1, 1.5, True, "5"],
    "eta0": [0.0, -1e-3, math.nan, math.inf, "1e-3"],
    "step_size": ["constant", "", None],
    "gradient_difference": ["next_batch", "", None],
    # -- OASIS options (blocks, beta2, seed: above) --
    "c": [0.0, -0.1, math.nan, math.inf, "0.1"],
    "eta": [0.0, -0.5, 1.5, math.nan, "0.99"],
    "model_blocks": ["layer", "", None, "Tensor"],
    "autoschedule": ["yes", 1, None],
    "n_batches_per_epoch": [0, -1, 1.5, True],
    "lr_max": [0.0, -1.0, math.nan, math.inf],
    # -- SMB options (the reference's names) --
    "k": [0, -1, 1.5, True, "20"],
    "damping_rule": ["linesearch", "gradient", "", None, "Constant"],
    "dampings": [(), (0.0,), (-1.0,), (math.nan,), (math.inf,), 1.0, [1.0]],
    "start": ["zero", "", None],
    "outside": ["keep", "", None],
    "reorthogonalize": ["partial", "", None],
    # -- saddle-free Newton options --
    "mu": [0.0, -5e-3, math.nan, math.inf, "5e-3", True],
    "sparsity": [1.0, -0.1, 1.5, math.nan, "0.9", True],
    "pruning": ["grasp", "", None],
    "coordinates_per_step": [0, -1, 2.5, True, "10"],
    "grasp_samples": [0, -1, 2.5, True],
    "mask_every": [0, -1, 2.5, True],
    "finite_step": ["exact", "", None],
    # -- zeroth-order options (deepzero) --
    "rho": [-0.05, math.nan, math.inf, "0.05"],
    "adaptive": ["yes", 1, None],
    "norm_rho": [-0.2, math.nan, math.inf, "0.2"],
    "plus_weight": [-0.1, 1.5, math.nan, "0.5"],
    "minus_weight": [-0.1, 1.5, math.nan, "0.5"],
    "loss_gradient": ["SAM", "", None],
    "direction": ["forward", "", None],
    # -- sharpness-aware wrappers (sam, gam, fd_gradreg; base, gamma, eps, momentum: above) --
}


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for s in steps:
        step_on(opt, lambda s=s: loss(model, s))


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return snapshot_of(list(model.parameters()), opt)


def snapshot_of(params: list[torch.Tensor], opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    state = [t.clone() for st_ in opt.state.values() for t in st_.values()]
    return [p.detach().clone() for p in params] + state


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# ------------------------------------------------------------------------------------------
# 1. invalid configuration


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_option_has_invalid_values_listed(name) -> None:
    missing = set(orthoptim.registry.get(name).options()) - set(INVALID_OPTIONS)
    assert not missing, f"add invalid values for {name} options {sorted(missing)}"


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        (spec.name, option, value)
        for spec in REGISTRY
        for option in spec.options()
        for value in INVALID_OPTIONS.get(option, [])
    ],
)
def test_invalid_option_raises_naming_it(name, option, value) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        orthoptim.build(name, mlp(), **{option: value})
    message = str(err.value)
    # The message names the option (plan options name their route's field) and the bad value.
    assert option.removeprefix("adamw_") in message
    parts = value if isinstance(value, tuple) else (value,)
    assert any(repr(v) in message for v in parts) or type(value).__name__ in message


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "kwargs", [{"lr": -1.0}, {"lr": math.nan}, {"lr": math.inf}, {"weight_decay": -1e-3}]
)
def test_invalid_lr_and_weight_decay(name, kwargs) -> None:
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        orthoptim.build(name, mlp(), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_and_policy(name) -> None:
    with pytest.raises(TypeError, match="unknown option"):
        orthoptim.build(name, mlp(), lerning_rate=0.1)
    with pytest.raises(ValueError, match=r"nonfinite must be one of \('raise', 'skip', 'off'\)"):
        orthoptim.build(name, mlp(), nonfinite="ignore")


# ------------------------------------------------------------------------------------------
# 2. unsupported parameters


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_complex_parameters_are_refused(name) -> None:
    with pytest.raises(TypeError, match="real floating-point"):
        orthoptim.build(name, [torch.zeros(3, dtype=torch.complex64, requires_grad=True)])


# ------------------------------------------------------------------------------------------
# 3. non-finite gradients


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, -1], ids=["first-param", "last-param"])
def test_nonfinite_gradient_raises_and_changes_nothing(name, bad, where) -> None:
    model = mlp()
    opt = orthoptim.build(name, model)
    train(model, opt, range(2))
    before = snapshot(model, opt)
    victim = list(model.parameters())[where]
    # a spoiled closure spoils every evaluation: one at the previous point (oasis) is named first
    found = r"gradient of parameter \S+ (holds NaN or Inf|at its previous value holds NaN)"
    with spoiled(victim, bad), pytest.raises(NonFiniteGradientError, match=found):
        step_on(opt, corrupted(model, opt, 2, victim, bad))
    assert_same(snapshot(model, opt), before)


def corrupted(model: nn.Module, opt: torch.optim.Optimizer, seed: int, victim, bad: float):
    """Batch ``seed``'s loss, whose backward writes ``bad`` into the first element of
    ``victim``'s gradient (a hook, removed after the step: see ``spoiled``); for a zeroth-order
    estimator, which calls no backward, the loss itself is ``bad``."""

    def compute() -> torch.Tensor:
        value = loss(model, seed)
        return value if opt.plan.closure_backward else value * bad

    return compute


@contextlib.contextmanager
def spoiled(victim: torch.Tensor, bad: float):
    """While open, every gradient computed for ``victim`` has ``bad`` as its first element."""

    def spoil(g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        g.view(-1)[0] = bad
        return g

    handle = victim.register_hook(spoil)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_gradient_skip_policy(name) -> None:
    model, twin = mlp(), mlp()
    opt = orthoptim.build(name, model, nonfinite="skip")
    twin_opt = orthoptim.build(name, twin, nonfinite="skip")
    train(model, opt, range(2))
    train(twin, twin_opt, range(2))
    before = snapshot(model, opt)
    victim = list(model.parameters())[1]
    with spoiled(victim, math.nan):
        step_on(opt, corrupted(model, opt, 99, victim, math.nan))  # skipped for every group
    assert opt.skipped_steps == 1
    assert_same(snapshot(model, opt), before)
    train(model, opt, range(2, 4))  # training continues as if the bad batch never came
    train(twin, twin_opt, range(2, 4))
    assert_same(snapshot(model, opt), snapshot(twin, twin_opt))
    # in every saved group, where DCP and get_state_dict keep it
    assert all(g["orthoptim_skipped_steps"] == 1 for g in opt.state_dict()["param_groups"])
    resumed = orthoptim.build(name, mlp(), nonfinite="skip")
    resumed.load_state_dict(opt.state_dict())
    assert resumed.skipped_steps == 1


# ------------------------------------------------------------------------------------------
# 4. degenerate inputs


def degenerate_params(name: str, shape: tuple[int, int], dtype: torch.dtype):
    """A matrix and a vector routed as the spec needs: role-tagged groups for a plan, the
    matrix alone for a matrix-only chain (one with a default plan), both for the rest."""
    w = torch.randn(shape, dtype=dtype).requires_grad_()
    v = torch.randn(shape[0], dtype=dtype).requires_grad_()
    spec = orthoptim.registry.get(name)
    if spec.needs_module:  # its hooks need the layer: w becomes the hidden weight of a model
        model = nn.Sequential(nn.Linear(shape[1], shape[0], bias=False), nn.Linear(shape[0], 1))
        model.to(dtype)[0].weight.data.copy_(w.detach())
        return model, [model[0].weight]
    if isinstance(spec.make(), orthoptim.Plan):
        return [{"params": [w], "role": "hidden"}, {"params": [v], "role": "vector"}], [w, v]
    if spec.adamw is not None:
        return [w], [w]
    return [w, v], [w, v]


# fp16 holds up to 65504; 1e30 is beyond sqrt(float32 max) = 1.8e19, where the step refuses
# the gradient (its square overflows) and leaves everything as it was.
MAX_MAGNITUDE = {torch.float32: 1e30, torch.bfloat16: 1e30, torch.float16: 10.0}
SQUARE_OVERFLOWS = 1.9e19


@given(
    name=st.sampled_from(NAMES),
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    exponent=st.sampled_from([-30, -8, 0, 8, 15, 30]),
    kind=st.sampled_from(["random", "zero", "rank1"]),
)
def test_degenerate_gradients_stay_finite(name, rows, cols, dtype, exponent, kind) -> None:
    magnitude = min(10.0**exponent, MAX_MAGNITUDE[dtype])
    groups, params = degenerate_params(name, (rows, cols), dtype)
    opt = orthoptim.build(name, groups)
    for _ in range(3):
        grads = []
        for p in params:
            if kind == "zero":
                g = torch.zeros_like(p)
            elif kind == "rank1" and p.ndim == 2:
                g = torch.outer(torch.randn(rows), torch.randn(cols))
            else:
                g = torch.randn(p.shape)
            grads.append((g * magnitude).to(dtype))
        if magnitude > SQUARE_OVERFLOWS and kind != "zero":
            before = snapshot_of(params, opt)
            with pytest.raises(NonFiniteGradientError, match="whose square overflows"):
                step_all(opt, params, grads)
            assert_same(snapshot_of(params, opt), before)
        else:
            step_all(opt, params, grads)
    for p in params:
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
    for state in opt.state.values():
        for t in state.values():
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_gradient_whose_square_overflows_is_refused_or_skipped(name, dtype) -> None:
    groups, params = degenerate_params(name, (5, 4), dtype)
    opt = orthoptim.build(name, groups)
    step_all(opt, params, [torch.randn(p.shape).to(dtype) for p in params])
    grads = [(torch.randn(params[0].shape) * 1e30).to(dtype), *(p.grad for p in params[1:])]
    before = snapshot_of(params, opt)
    found = r"(\|g\| = |at its previous value ).*whose square overflows"  # previous: oasis
    with pytest.raises(NonFiniteGradientError, match=found):
        step_all(opt, params, grads)
    assert_same(snapshot_of(params, opt), before)
    opt.nonfinite = "skip"
    step_all(opt, params, grads)
    assert opt.skipped_steps == 1
    assert_same(snapshot_of(params, opt), before)


# ------------------------------------------------------------------------------------------
# 5. checkpoints


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_is_bit_identical_to_an_uninterrupted_run(name, dtype) -> None:
    straight, straight_opt, second, second_opt = straight_and_resumed(
        lambda: mlp().to(dtype), lambda m: orthoptim.build(name, m), train, 4, 7
    )
    assert_same(snapshot(second, second_opt), snapshot(straight, straight_opt))
    steps = {int(st_["step"].item()) for st_ in second_opt.state.values()}
    assert steps == {7}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_from_a_different_model_shape_raises(name) -> None:
    small = mlp()
    opt = orthoptim.build(name, small)
    train(small, opt, range(1))
    wide = nn.Sequential(
        nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 12), nn.Tanh(), nn.Linear(12, 3)
    )
    if any(t.ndim > 0 for st_ in opt.state.values() for t in st_.values()):
        with pytest.raises(ValueError, match="does not fit parameter"):
            orthoptim.build(name, wide).load_state_dict(opt.state_dict())
    # else (smb, saddle_free_newton) only step counters are saved: no shape to compare
    deeper = nn.Sequential(nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="parameters, this optimizer"):
        orthoptim.build(name, deeper).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_from_a_different_optimizer_raises(name) -> None:
    model = mlp()
    other = "adamw" if name != "adamw" else "sgd"
    opt = orthoptim.build(other, model)
    train(model, opt, range(1))
    with pytest.raises(ValueError, match="different optimizer"):
        orthoptim.build(name, model).load_state_dict(opt.state_dict())


def test_adam_moments_of_16_bit_parameters_are_float32() -> None:
    model = mlp().to(torch.bfloat16)
    opt = orthoptim.build("adamw", model)
    train(model, opt, range(1))
    for state in opt.state.values():
        assert state["adam.exp_avg"].dtype == state["adam.exp_avg_sq"].dtype == torch.float32


def test_finite_check_handles_empty_huge_and_mixed_dtype_gradients() -> None:
    check = orthoptim.nonfinite.all_finite
    huge = torch.full((2,), 1e150, dtype=torch.float64)  # its square fits in float64 only
    assert check([torch.empty(0), huge, torch.ones(3, dtype=torch.bfloat16)])
    assert check([])
    assert check([torch.full((3,), 1.8e19), torch.full((3,), -60000.0, dtype=torch.float16)])
    for bad in (math.nan, math.inf, -math.inf):
        g = torch.zeros(5, dtype=torch.float16)
        g[3] = bad
        assert not check([huge, g])
    # Squares that overflow the statistics' dtype count as non-finite.
    assert not check([torch.tensor([0.0, -1.9e19])])
    assert not check([torch.tensor([2e19], dtype=torch.bfloat16)])
    assert not check([torch.tensor([1e155], dtype=torch.float64)])
