"""spd_momentum: an oracle transcribed from the reference's maths, the factors' schedule, the
covariance capture, convergence, bfloat16 factors, and a conv model's resume.

The reference (yorkerlin/StructuredNGD-DL@288b20cae250dd1b0f885133130139ec17023326
``optimizers/local_cov.py``) is not a package (and hard-codes CUDA), so it is not run here:
``ReferenceLocal`` re-derives its update (``_update_local`` without ``faster``,
``_update_natural_grad``, ``_step``) and its statistics (``utils/kfac_utils.py`` ``ComputeCovA``,
``ComputeCovG`` with ``batch_averaged=True``) from the formulas, on an explicit bias-free MLP
whose layer inputs and output gradients it reads off autograd itself (no module hooks, none of
the library's code). SINGD, the second reference, runs in ``tests/reference``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import orthoptim
from orthoptim.transforms.capture import ActivationCapture
from orthoptim.transforms.spd import SPDPrecondition, factor_lr
from tests.helpers import conv_classifier, straight_and_resumed, train_conv_classifier
from tests.recipes.teacher_student import random_teacher, train


def reference_lr1(step: int) -> float:
    """``_update_local``'s schedule at ``lr_cov=1e-2`` (0-based ``self.steps``)."""
    return 2e-4 if step <= 100 else (2e-3 if step < 500 else 1e-2)


class ReferenceLocal:
    """``LocalOptimizer`` (dense, ``faster=False``, ``TCov = TInv = every``) on ``tanh(x W1^T)
    -> tanh(. W2^T) -> . W3^T + b3`` with ``W3, b3`` frozen, weight decay 0."""

    def __init__(
        self,
        weights: list[torch.Tensor],
        lr: float,
        momentum: float,
        damping: float,
        beta2: float,
        every: int,
        lr1: Callable[[int], float],
    ) -> None:
        self.w = [w.clone() for w in weights]
        self.lr, self.momentum, self.damping, self.beta2 = lr, momentum, damping, beta2
        self.every, self.lr1, self.steps = every, lr1, 0
        dt = self.w[0].dtype
        self.a_fac = [torch.eye(w.shape[1], dtype=dt) for w in self.w[:2]]
        self.b_fac = [torch.eye(w.shape[0], dtype=dt) for w in self.w[:2]]
        self.m_a = [torch.zeros_like(a) for a in self.a_fac]
        self.m_b = [torch.zeros_like(b) for b in self.b_fac]
        self.buf = [torch.zeros_like(w) for w in self.w[:2]]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        w1, w2 = (self.w[0].clone().requires_grad_(), self.w[1].clone().requires_grad_())
        z1 = x @ w1.T
        h1 = torch.tanh(z1)
        z2 = h1 @ w2.T
        out = torch.tanh(z2) @ self.w[2].T + self.w[3]
        z1.retain_grad()
        z2.retain_grad()
        nn.functional.mse_loss(out, y).backward()
        n = x.shape[0]
        for i, (inp, dz, w) in enumerate(((x, z1.grad, w1), (h1.detach(), z2.grad, w2))):
            aa = inp.T @ (inp / n)
            gg = dz.T @ (dz * n)
            if self.steps % self.every == 0:
                self._update_local(i, aa, gg)
            g = w.grad
            v = self.b_fac[i] @ (self.b_fac[i].T @ ((g @ self.a_fac[i]) @ self.a_fac[i].T))
            self.buf[i] = self.momentum * self.buf[i] + v
            self.w[i] = self.w[i] - self.lr * self.buf[i]
        self.steps += 1

    def _update_local(self, i: int, aa: torch.Tensor, gg: torch.Tensor) -> None:
        a, b = self.a_fac[i], self.b_fac[i]
        p, d = a.shape[0], b.shape[0]
        v_a, v_b = a.T @ aa @ a, b.T @ gg @ b
        ata, btb = a.T @ a, b.T @ b
        ng_a = (self.damping * torch.trace(btb) / d * ata + torch.trace(v_b) / d * v_a) / 2
        ng_a = ng_a - torch.eye(p, dtype=a.dtype) / 2
        ng_b = (self.damping * torch.trace(ata) / p * btb + torch.trace(v_a) / p * v_b) / 2
        ng_b = ng_b - torch.eye(d, dtype=b.dtype) / 2
        lr1 = self.lr1(self.steps)
        self.m_a[i] = self.beta2 * self.m_a[i] + (ng_a + ng_a.T) / 2
        self.a_fac[i] = a - lr1 * (a @ self.m_a[i])
        self.m_b[i] = self.beta2 * self.m_b[i] + (ng_b + ng_b.T) / 2
        self.b_fac[i] = b - lr1 * (b @ self.m_b[i])


def bias_free_mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 12, bias=False), nn.Tanh(), nn.Linear(12, 10, bias=False), nn.Tanh(),
        nn.Linear(10, 3),
    ).to(dtype)  # fmt: skip
    for p in model[4].parameters():
        p.requires_grad_(False)  # the head would go to AdamW; frozen, both sides skip it
    return model


def batches(steps: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, -1, 8)
    for _ in range(steps):
        yield (
            (torch.randn(32, 8, generator=g) * scales + 0.5).to(dtype),
            torch.randn(32, 3, generator=g).to(dtype),
        )


@pytest.mark.parametrize(
    ("options", "lr1"),
    [
        ({"update_every": 1}, reference_lr1),  # the reference's warmup schedule
        ({"update_every": 3, "cov_warmup": "none", "lr_cov": 0.05}, lambda step: 0.05),
    ],
)
def test_matches_the_transcribed_reference(options, lr1) -> None:
    model = bias_free_mlp()
    weights = [p.detach() for p in model.parameters()]
    hyper = {"momentum": 0.9, "damping": 1e-2, "riemannian_momentum": 0.5}
    ref = ReferenceLocal(
        weights, 0.05, hyper["momentum"], hyper["damping"], 0.5, options["update_every"], lr1
    )
    opt = orthoptim.build("spd_momentum", model, lr=0.05, weight_decay=0.0, **options, **hyper)
    identity = ReferenceLocal(weights, 0.05, 0.9, 1e-2, 0.5, 1, lambda step: 0.0)
    for x, y in batches(12):
        ref.step(x, y)
        identity.step(x, y)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    trained = [p.detach() for p in model.parameters()][:2]
    diff = max(float((p - q).abs().max()) for p, q in zip(trained, ref.w[:2], strict=True))
    moved = max(float((p - q).abs().max()) for p, q in zip(ref.w[:2], identity.w[:2], strict=True))
    print(f"spd_momentum vs transcribed reference, 12 steps, float64: max |diff| {diff:.1e} "
          f"(the factors moved the weights by {moved:.1e})")  # fmt: skip
    assert moved > 1e-6  # the factors matter in this test
    assert diff < 1e-12


def test_factor_lr_follows_the_reference_schedule_at_its_lr_cov() -> None:
    for step in (0, 1, 100, 101, 499, 500, 10_000):
        assert factor_lr(1e-2, step, "reference") == pytest.approx(reference_lr1(step), rel=1e-12)
        assert factor_lr(0.3, step, "none") == 0.3


def test_covariance_capture_equals_unfold_and_sample_outer_products() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2, bias=False).double()
    dense = nn.Linear(5 * 4 * 4, 4, bias=False).double()
    cap = ActivationCapture(statistics="covariance")
    cap.attach(nn.Sequential(conv, nn.Flatten(), dense))
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    z = conv(x)
    z.retain_grad()
    out = dense(z.flatten(1))
    out.retain_grad()
    (out**2).mean().backward()
    a_conv, g_conv = cap.take(conv.weight)
    patches = nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27)
    assert torch.allclose(a_conv, patches.T @ patches / patches.shape[0], rtol=1e-12)
    rows = z.grad.flatten(2).transpose(1, 2).reshape(-1, 5)
    assert torch.allclose(g_conv, 6 * rows.T @ rows, rtol=1e-12)
    a_dense, g_dense = cap.take(dense.weight)
    h = z.detach().flatten(1)
    assert torch.allclose(a_dense, h.T @ h / 6, rtol=1e-12)
    assert torch.allclose(g_dense, 6 * out.grad.T @ out.grad, rtol=1e-12)
    import copy

    assert copy.deepcopy(cap).statistics == "covariance"
    with pytest.raises(ValueError, match="statistics must be one of"):
        ActivationCapture(statistics="second")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="covariance"):
        SPDPrecondition(capture=ActivationCapture())


def fit(options: dict[str, object], lr: float) -> float:
    return train("spd_momentum", 200, lr=lr, problem=random_teacher, options=options)[-1]


FAST = {"update_every": 1, "cov_warmup": "none"}


def test_convergence_on_the_random_teacher() -> None:
    """Updating the factors every step from the start (``FAST``; the reference's warmup keeps
    them near ``I`` for 100 steps) beats the same chain with frozen identity factors
    (``lr_cov`` tiny: momentum SGD) and AdamW at their default lr."""
    results = {
        "dense": fit(FAST, 0.03),
        "diagonal": fit({**FAST, "structure": "diagonal"}, 1e-3),
        "defaults": train("spd_momentum", 200, problem=random_teacher)[-1],
        "identity": fit({**FAST, "lr_cov": 1e-12}, 0.03),
        "adamw": train("adamw", 200, problem=random_teacher)[-1],
    }
    print("200 steps, random teacher, final MSE:", {k: f"{v:.2e}" for k, v in results.items()})
    assert results["dense"] < 0.1 * results["identity"]
    assert results["dense"] < 0.1 * results["adamw"]
    assert results["diagonal"] < 0.8 * results["identity"]
    assert results["defaults"] < 0.2 * 0.22  # trains from the initial 0.22 at the defaults


def test_bfloat16_factors_end_within_tolerance_of_float32_ones() -> None:
    """The paper's low-precision claim, at ``factor_dtype="bfloat16"`` (not the default): on the
    random teacher at lr 0.01, the final loss with bfloat16 factors is at most 60% above float32
    factors' (measured: 5.02e-3 vs 3.36e-3 at seed 0, 4.23e-3 vs 3.76e-3 at seed 1) and far
    below the identity factors' (1.78e-2). At lr 0.03 float32 factors reach 4e-4 and bfloat16
    ones stall near 3e-3: the factors' 8-bit mantissa bounds how fine a preconditioner they
    hold, so bfloat16 is an option, not the default."""
    wide = fit({**FAST, "factor_dtype": "float32"}, 0.01)
    narrow = fit({**FAST, "factor_dtype": "bfloat16"}, 0.01)
    identity = fit({**FAST, "lr_cov": 1e-12}, 0.01)
    print(
        f"random teacher: float32 factors {wide:.3e}, bfloat16 {narrow:.3e}, "
        f"identity {identity:.3e}"
    )
    assert narrow != wide
    assert abs(narrow - wide) <= 0.6 * wide
    assert narrow < 0.5 * identity


def test_resume_is_bit_exact_on_a_conv_model_across_an_update() -> None:
    for structure in ("dense", "diagonal"):
        straight, _, second, _ = straight_and_resumed(
            conv_classifier,
            lambda m, s=structure: orthoptim.build(
                "spd_momentum", m, update_every=3, cov_warmup="none", structure=s
            ),
            train_conv_classifier,
            5,
            10,
        )
        for p, q in zip(straight.parameters(), second.parameters(), strict=True):
            assert torch.equal(p, q)
