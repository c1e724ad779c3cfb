"""Independent oracles for SMB (Birbil, Martin, Onay, Öztoprak, "Bolstering Stochastic Gradient
Descent with Model Building", arXiv 2111.07058); they import nothing from orthoptim.

Two readings of the same algorithm, written independently of each other and of
``orthoptim.functional.smb``:

* the reference code's (github.com/sibirbil/SMB ``source/smbsolve/smb.py`` at commit
  17fb8ba4f440a5e36e66d701385ecdef6cb05723, ``SMB.step_smb``), restated operation by operation:
  ``reference_model_step`` (its ``sigma``, ``theta``, ``cg``, ``cs``, ``cy`` from six dot
  products) and ``ReferenceSMB`` (its step over param groups, one after the other, with its
  ``autoschedule``);
* the paper's model, solved densely: ``model_minimiser`` minimises
  ``g.d + (y.d)(s.d)/|s|^2 + sigma |d|^2/|s|^2`` with ``torch.linalg.solve``, and
  ``paper_smb`` runs the paper's iteration as a plain loop on a flat list of tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

PINNED_COMMIT = "17fb8ba4f440a5e36e66d701385ecdef6cb05723"


def _sigma(s: Tensor, g: Tensor, y: Tensor, eta: float) -> Tensor:
    return 0.5 * (s.norm() * (y.norm() + g.norm() / eta) - torch.dot(y, s))


def reference_model_step(s: Tensor, g: Tensor, y: Tensor, eta: float) -> Tensor:
    """The reference's model step ``cs s + cg g + cy y`` of one tensor (flattened inputs)."""
    ys, ss, yy = torch.dot(y, s), torch.dot(s, s), torch.dot(y, y)
    yg, sg = torch.dot(y, g), torch.dot(s, g)
    sigma = _sigma(s, g, y, eta)
    shifted = ys + 2.0 * sigma
    theta = shifted**2 - ss * yy
    cg = -ss / (2.0 * sigma)
    cs = cg / theta * (yy * sg - shifted * yg)
    cy = cg / theta * (ss * yg - shifted * sg)
    return cs * s + cg * g + cy * y


def model_minimiser(s: Tensor, g: Tensor, y: Tensor, eta: float) -> Tensor:
    """The minimiser of the paper's model, by a dense linear solve of its stationarity
    condition ``(B + 2 sigma / |s|^2 I) d = -g``, ``B = (y s^T + s y^T) / |s|^2``."""
    ss = torch.dot(s, s)
    hessian = (torch.outer(y, s) + torch.outer(s, y)) / ss
    regularised = hessian + (2.0 * _sigma(s, g, y, eta) / ss) * torch.eye(s.numel(), dtype=s.dtype)
    return torch.linalg.solve(regularised, -g)


def paper_smb(
    params: Sequence[Tensor],
    loss_and_grads: Callable[[Sequence[Tensor]], tuple[Tensor, list[Tensor]]],
    *,
    lr: float,
    steps: int,
    c: float = 0.1,
    eta: float = 0.99,
    blocks: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[Tensor]], list[bool]]:
    """The paper's iteration on one minibatch per step (here: a deterministic loss): the SGD
    trial, the Armijo test on the same loss, else each block's model step from ``x``
    (``model_minimiser`` on the block's tensors concatenated; ``blocks`` lists the tensors'
    indices per block, default each tensor its own). Returns the parameters after every step and
    whether each trial was kept."""
    x = [p.detach().clone() for p in params]
    blocks = [[i] for i in range(len(x))] if blocks is None else blocks
    history: list[list[Tensor]] = []
    kept: list[bool] = []
    for _ in range(steps):
        loss, g = loss_and_grads(x)
        trial = [xi - lr * gi for xi, gi in zip(x, g, strict=True)]
        trial_loss, g_trial = loss_and_grads(trial)
        g_norm_sq = sum(float(torch.dot(gi.flatten(), gi.flatten())) for gi in g)
        accept = g_norm_sq**0.5 < 1e-8 or float(trial_loss) <= float(loss) - c * lr * g_norm_sq
        if accept:
            x = trial
        else:
            new = list(x)
            for block in blocks:
                flat_g = torch.cat([g[i].flatten() for i in block])
                flat_y = torch.cat([(g_trial[i] - g[i]).flatten() for i in block])
                d = model_minimiser(-lr * flat_g, flat_g, flat_y, eta)
                for i, part in zip(block, d.split([x[i].numel() for i in block]), strict=True):
                    new[i] = x[i] + part.view_as(x[i])
            x = new
        kept.append(accept)
        history.append([xi.clone() for xi in x])
    return history, kept


class ReferenceSMB:
    """The reference's ``SMB`` with ``independent_batch=False``, restated: ``step(closure)`` where
    the closure zeroes the gradients and returns the loss without calling backward (the
    reference's usage). Param groups are dicts with ``params`` and ``lr`` (the other constants
    are shared). As there, the groups are processed one after the other, each against the loss
    at the start of the step; the record of model steps is shared by the groups."""

    def __init__(
        self,
        groups: Sequence[dict[str, object]],
        *,
        eta: float = 0.99,
        c: float = 0.1,
        autoschedule: bool = False,
        n_batches_per_epoch: int = 500,
        gamma: float = 0.05,
        beta: float = 0.9,
        lr_max: float = 20.0,
    ) -> None:
        self.groups = [dict(group) for group in groups]
        self.eta, self.c = eta, c
        self.autoschedule, self.period = autoschedule, n_batches_per_epoch
        self.gamma, self.beta, self.lr_max = gamma, beta, lr_max
        self.record: list[int] = []
        self.kept: list[bool] = []

    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        loss = closure()
        loss.backward()
        for group in self.groups:
            params: list[Tensor] = group["params"]  # type: ignore[assignment]
            lr = float(group["lr"])  # type: ignore[arg-type]
            g = [p.grad.detach().clone() for p in params]
            g_norm = torch.sqrt(sum(torch.sum(gi * gi) for gi in g))
            threshold = loss.detach().item() - self.c * lr * g_norm.pow(2).item()
            s = [-lr * gi for gi in g]
            with torch.no_grad():
                for p, si in zip(params, s, strict=True):
                    p.add_(si)
            trial_loss = closure()
            model = g_norm >= 1e-8 and trial_loss.detach().item() > threshold
            if model:
                trial_loss.backward()
                with torch.no_grad():
                    for p, gi, si in zip(params, g, s, strict=True):
                        y = p.grad - gi
                        d = reference_model_step(si.flatten(), gi.flatten(), y.flatten(), self.eta)
                        p.sub_(si).add_(d.view_as(p))
            self.record.append(int(model))
            self.kept.append(not model)
            if self.autoschedule and len(self.record) >= self.period:
                if sum(self.record) / len(self.record) > self.gamma:
                    group["lr"] = lr * self.beta
                elif lr / self.beta <= self.lr_max:
                    group["lr"] = lr / self.beta
                self.record = []
        return loss
