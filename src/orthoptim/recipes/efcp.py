"""EFCP: M-FAC over a compressed gradient window with error feedback."""

from __future__ import annotations

from orthoptim.functional.mfac import DampingRule
from orthoptim.recipes.options import default
from orthoptim.transforms.chain import Chain, chain
from orthoptim.transforms.efcp import Compression, EfcpPrecondition
from orthoptim.transforms.mfac import Blocks
from orthoptim.transforms.momentum import Momentum
from orthoptim.transforms.scaling import AddWeightDecay


def efcp(
    *,
    window: int = default(EfcpPrecondition, "window"),
    damping: float = default(EfcpPrecondition, "damping"),
    momentum: float = 0.0,
    blocks: Blocks = default(EfcpPrecondition, "blocks"),
    compression: Compression = default(EfcpPrecondition, "compression"),
    density: float = default(EfcpPrecondition, "density"),
    rank: int = default(EfcpPrecondition, "rank"),
    damping_rule: DampingRule = default(EfcpPrecondition, "damping_rule"),
) -> Chain:
    """EFCP optimizer (Modoranu, Kalinov, Kurtic, Frantar, Alistarh 2024, arXiv 2306.06098):
    M-FAC whose gradient window is stored compressed, with error feedback.

    Chain: ``g <- g + wd theta`` (L2, coupled, as ``mfac``); ``a <- g + e``; ``C(a)`` replaces
    the window's oldest row; ``e <- a - C(a)``; ``u <- (lambda I + G^T G / m)^{-1} C(a)``; with
    ``momentum > 0``, ``v <- mu v + (1 - mu) u``, ``u <- v`` (``EfcpPrecondition``). Every
    parameter is preconditioned, vectors and embeddings included, as in ``mfac`` and the
    reference (which compresses the whole flattened model): no AdamW route.

    Compression (``compression``): ``"topk"`` (default; the paper's "sparse M-FAC", the
    reference's ``kgmfac``), the ``density`` fraction of each parameter's accumulator largest in
    magnitude, stored as float32 values and int32 indices; ``"lowrank"`` (the reference's
    ``lrmfac``), rank ``rank`` by one warm-started power step. With ``density=1.0`` (or a rank
    at least each matrix's smaller side) nothing is dropped and the optimizer is ``mfac`` with
    the same options up to round-off (tests/recipes/test_efcp.py).

    Memory, state bytes per float32 element (``EfcpPrecondition.state_bytes``; the error buffer
    is 4 of them) against ``mfac``'s ``4 m``, plus ``8 m^2`` per tensor for the Gram matrix:

    - default (``window=128``, top-k ``density=0.01``): ``8 * 128 * 0.01 + 4 = 14.2`` (mfac at
      its default ``window=16``: 64; at ``window=128``: 512);
    - the paper's ``window=1024``, ``density=0.01``: ``8 * 1024 * 0.01 + 4 = 86`` against dense
      M-FAC's 4096 (a 1M-parameter model: ~86 MB against 4.3 GB; the test asserts it);
    - low rank 4 at ``window=1024`` on a 512 x 512 matrix: ``4 * 1024 * 1024 * 4 / 512^2 + 4 =
      68``.

    Damping (``damping_rule``): ``"constant"`` (default, the reference) or
    ``"gradient_normalized"``, ``lambda_t = damping ||g_t||`` with ``g_t`` the block's gradient
    before error feedback and compression (Semenov, Jaggi, Doikov 2025, arXiv 2506.13710;
    ``mfac`` states the rule and why it is not the default). The window's compressed rows carry
    a fraction of the gradient, so the coefficient wants to be larger than mfac's: ``damping=0.1``
    trained on the teacher-student problems, 1e-2 not on the random teacher
    (tests/recipes/test_gradient_normalized_damping.py).

    The reference's headline configuration (IST-DASLab/EFCP README, ASDL CIFAR-10 and BERT runs:
    ``--ngrads 1024 --k 0.01 --rank 4 --damp 1e-05 --momentum 0``, lr 0.03 for ResNet-18)
    beside our defaults:

    - ``blocks``: reference one block over the whole model (``"model"``), ours ``"parameter"``;
    - ``window``: reference 1024, ours 128;
    - ``density``: reference 0.01 of the whole model, ours 0.01 of each parameter;
    - ``damping``: reference 1e-5 (ImageNet 1e-7), ours 1e-2 (``mfac``: 1e-3);
    - ``momentum``: reference 0, ours 0 (``mfac``: 0.9, EMA; ``momentum > 0`` adds the EMA).

    ``orthoptim.build("efcp", model, lr=0.03, blocks="model", window=1024, density=0.01,
    damping=1e-5, momentum=0.0)`` runs it. Why ours differ: the window's memory is what EFCP
    shrinks, but its ``m x m`` eigendecomposition still costs ``9 m^3`` per block and step
    (about 0.8 s for m=1024 in float64 on two CPU cores; the reference's unpivoted LU is the same
    order), so m=128 keeps the step at 1.46x ``muon``'s and 1.8x ``mfac``'s (m=16) on the speed
    benchmark's 24 matrices (benchmarks/records/2026-12-06_step-speed-9, two CPU threads; the
    top-k selection is about a third of it) while holding 8
    times ``mfac``'s gradients in under a quarter of its bytes; ``"parameter"`` blocks run under
    a distributed step. Damping 1e-2 and no momentum (not ``mfac``'s 1e-3 and 0.9): at
    ``mfac``'s the top-k window's first steps, ``~ C(a) / lambda`` while
    ``||C(a)||^2 << m lambda``, and the error buffer's delayed entries fed through momentum made
    the teacher-student losses rise (random teacher 0.22 -> 0.58 in 120 steps), whereas at 1e-2
    without momentum the compressed window trains like the uncompressed one
    (tests/recipes/test_efcp.py, within 10%).

    Differences from the reference (IST-DASLab/EFCP@a33a3a5 ``optimizers/sparse/
    SparseGradientMFAC.py``, ``SparseHinvSequential.py``, ``helpers/optim.py::apply_topk``,
    ``optimizers/lowrank/low_rank_optim.py::LowRankMFAC``, ``compressor.py``): top-k per
    parameter (the reference's ``layerwise_index_pairs`` option of ``compute_topk``; its
    default is one top-k over the flattened model) with at least one entry per tensor; the error
    buffer per parameter (elementwise the same as its flat one); int32 indices (reference int64);
    the inverse from ``functional.mfac`` (float64 ``eigh``, row form ``m G^T C e_slot``) instead
    of the unpivoted LU recursion; by default one block per parameter; momentum is an EMA
    (``mfac``'s; the sparse reference sums, ``v <- mu v + u``, the low-rank one is an EMA);
    weight decay coupled L2 before compression (the low-rank reference's; the sparse
    reference's default ``wd_type="wd"`` multiplies the weights by ``1 - wd`` outside the
    preconditioner); the power iteration's first right factor is drawn from a fixed seed (the
    reference: unseeded ``randn``), its Gram-Schmidt leaves a column with nothing left at zero
    (reference: divides by ``norm + 1e-8``), and a right-factor column that comes out zero keeps
    its previous value; low-rank vectors are rank-1 columns (exact, as the reference's
    uncompressed vectors), and with ``blocks="model"`` low rank has one window over the route
    (the reference's ``LowRankAggregateMFAC``).

    References: Ionut-Vlad Modoranu, Aleksei Kalinov, Eldar Kurtic, Elias Frantar, Dan
    Alistarh, "Error Feedback Can Accurately Compress Preconditioners" (ICML 2024, arXiv
    2306.06098); IST-DASLab/EFCP@a33a3a5725fbe78ab3ed7e8ce246a8c77b0dfb62.
    """
    heavy_ball = Momentum(beta=momentum, kind="ema")  # built (so validated) even when unused
    precondition = EfcpPrecondition(
        window=window,
        damping=damping,
        blocks=blocks,
        compression=compression,
        density=density,
        rank=rank,
        damping_rule=damping_rule,
    )
    return chain(AddWeightDecay(), precondition, *((heavy_ball,) if momentum > 0 else ()))
