"""SMB: stochastic model building, the step of one block of parameters.

Birbil, Martin, Onay, Öztoprak, "Bolstering Stochastic Gradient Descent with Model Building"
(arXiv 2111.07058; TOP 2024). Reference code: github.com/sibirbil/SMB, ``source/smbsolve/smb.py``
at commit 17fb8ba4f440a5e36e66d701385ecdef6cb05723.

One SMB iteration on a minibatch: the gradient ``g`` at ``x``, the SGD trial step ``s = -t g``
(``t`` the lr); the trial is kept when it decreases the same minibatch's loss enough (Armijo,
``f(x + s) <= f(x) + c g.s``, ``armijo_accepts``). Otherwise the gradient at the trial point
``g_t`` gives ``y = g_t - g`` and each block of parameters (a tensor in the reference) takes its
own model step from ``x``:

    d = argmin_d  g.d + (y.d)(s.d) / |s|^2 + sigma |d|^2 / |s|^2,
    sigma = (|s| (|y| + |g| / eta) - y.s) / 2,

a quadratic model whose rank-two Hessian ``(y s^T + s y^T) / |s|^2`` maps ``s`` to ``y`` plus a
multiple of ``s``, regularised so its smallest eigenvalue is ``|g| / (eta |s|) > 0``. The
reference writes the minimiser as ``c_s s + c_g g + c_y y`` with coefficients from the six dot
products of ``s, g, y`` (its ``sigma``, ``theta``, ``cg``, ``cs``, ``cy``). Since the trial step
is ``s = -t g``, those collapse (derived here; the tests check it against the reference's
coefficients and against a dense solve of the model) to

    d = -t (alpha g + beta y),
    alpha = eta (eta |y| + |g|) / (2 eta |y| + |g|),  beta = eta^2 |g| / (2 eta |y| + |g|),

two norms per block instead of six dot products, and no ``y.g``: the step blends the gradients
at ``x`` and at the trial point. Without curvature (``y = 0``) it is ``eta`` times the trial.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orthoptim.functional.moments import stats_dtype

GRADIENT_NORM_FLOOR = 1e-8
"""Below this gradient norm the reference keeps the trial step without testing it."""


def norm_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float32 for 16-bit tensors (squares of small gradients underflow), their dtype otherwise."""
    return stats_dtype(tensors[0]) if tensors else torch.float32


def sgd_model_coefficients(g_norm: Tensor, y_norm: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """``(alpha, beta)`` of the model step ``d = -t (alpha g + beta y)`` after the trial step
    ``s = -t g``, from the block's norms ``|g|``, ``|y|`` (tensors of any one shape: one entry per
    block). Where both norms are 0 the model step is 0 (``alpha = beta = 0``): the reference
    divides 0 by 0 there, and 0 is the limit as ``|g| -> 0`` (``d`` is linear in ``g``'s
    direction and bounded by ``1.5 t eta |g|``)."""
    denominator = 2.0 * eta * y_norm + g_norm
    degenerate = denominator == 0
    safe = torch.where(degenerate, torch.ones_like(denominator), denominator)
    alpha = torch.where(degenerate, 0.0, eta * (eta * y_norm + g_norm) / safe)
    beta = torch.where(degenerate, 0.0, (eta * eta) * g_norm / safe)
    return alpha, beta


def armijo_accepts(
    loss: Tensor, trial_loss: Tensor, decrease: Tensor, grad_norm: Tensor, c: float
) -> Tensor:
    """Whether the SGD trial is kept (a 0-d bool tensor, never read on the host):
    ``trial_loss <= loss - c * decrease`` with ``decrease = -g.s = sum_p t_p |g_p|^2``, or the
    gradient norm below ``GRADIENT_NORM_FLOOR`` (the reference then keeps the trial untested).
    A non-finite trial loss fails the test (a comparison with NaN is False). A gradient norm
    that is not finite (its square overflowed the statistics' dtype) keeps the trial too: the
    model's coefficients would be ``inf / inf``, and the optimizer's non-finite check then
    names the gradient itself (the reference's step turns NaN there)."""
    sufficient = trial_loss <= loss - c * decrease
    return sufficient | (grad_norm < GRADIENT_NORM_FLOOR) | ~torch.isfinite(grad_norm)
