"""The registered optimizers: ``Spec`` and ``REGISTRY``, one explicit tuple.

Adding an optimizer means adding its recipe and one ``Spec`` here (above its family's comment
line); ``orthoptim.registry`` builds them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orthoptim.recipes import PLAN_OPTIONS, AdamWRoute, Plan, adamw, muon, sgd, with_adamw
from orthoptim.recipes.auon import AUON_ADAMW, HYBRID_AUON_ADAMW, auon, hybrid_auon
from orthoptim.recipes.deepzero import deepzero
from orthoptim.recipes.efcp import efcp
from orthoptim.recipes.first_order import gravity, innaprop, optimistic_amsgrad
from orthoptim.recipes.fismo import fismo
from orthoptim.recipes.gradient_sign import grams
from orthoptim.recipes.induced_metric import induced_metric
from orthoptim.recipes.kronecker import SHAMPOO_ADAMW, shampoo, soap
from orthoptim.recipes.lowrank import LOWRANK_ADAMW, frugal, lowrank_adamw
from orthoptim.recipes.mars import MARS_ADAMW, MARS_LION_ADAMW, mars_adamw, mars_lion
from orthoptim.recipes.mfac import mfac
from orthoptim.recipes.mkor import MKOR_ADAMW, mkor, mkor_h
from orthoptim.recipes.more_momentum import more_momentum
from orthoptim.recipes.muon import MUON_ADAMW, muon_polar
from orthoptim.recipes.nalr import muon_nalr
from orthoptim.recipes.normuon import NORMUON_ADAMW, normuon
from orthoptim.recipes.oasis import oasis
from orthoptim.recipes.psgd import PSGD_ADAMW, psgd_kron
from orthoptim.recipes.psgd_lra import psgd_lra
from orthoptim.recipes.radial import adamp, sgdp
from orthoptim.recipes.root import ROOT_ADAMW, root
from orthoptim.recipes.saddle_free import saddle_free_newton
from orthoptim.recipes.sharpness import fd_gradreg, gam, sam
from orthoptim.recipes.smb import smb
from orthoptim.recipes.spd import SPD_ADAMW, spd_momentum
from orthoptim.transforms import Chain


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """A registered optimizer.

    Args:
        name: registry key, the recipe function's name.
        recipe: builds the chain (or plan) from keyword options.
        lr: default learning rate (from the paper or its reference code).
        weight_decay: default weight decay.
        paper: citation with arXiv id where one exists.
        reference: the implementation its conventions are pinned to.
        tags: free-form labels (``"orthogonal"``, ``"adaptive"``, ``"plan"``, ...).
        adamw: for an optimizer meant for matrices only, the AdamW route that completes it for a
            whole model (``recipes.plan.with_adamw``: its roles -> AdamW, the rest -> it);
            ``None`` for optimizers that handle every parameter.
        single_process_only: why it cannot run under a distributed step (``None``: it can);
            ``build`` raises with it on a distributed model or process group. Optimizers whose
            chain ``needs_module`` are single-process only too (each rank's hooks see its own
            batch).
        race_tasks: the built-in race tasks it races on (``orthoptim race`` skips it on the
            others and records why); ``None``: every task. For optimizers realistic only on
            small models (``deepzero``: one forward pass per estimated coordinate;
            ``saddle_free_newton``: 20 Hessian-vector products and 6 closures per step, about
            100x AdamW's time per step on the race's lm model).

    ``needs_closure`` and ``needs_module`` are not declared here: they are properties of the
    transforms (``TransformBase``), read off the default whole-model plan.
    """

    name: str
    recipe: Callable[..., Chain | Plan]
    lr: float
    weight_decay: float = 0.0
    paper: str
    reference: str | None
    tags: frozenset[str] = frozenset()
    adamw: AdamWRoute | None = None
    single_process_only: str | None = None
    race_tasks: tuple[str, ...] | None = None

    @property
    def needs_closure(self) -> bool:
        """Whether ``step`` needs a closure at the default options (``Plan.needs_closure``;
        an option may change it: ``mars_adamw(variant="exact")``)."""
        return self.whole_model_plan().needs_closure

    @property
    def needs_module(self) -> bool:
        """Whether it reads layer activations through module hooks (``Plan.needs_module``):
        ``build`` then needs the ``nn.Module`` and attaches the hooks to it."""
        return self.whole_model_plan().needs_module

    def options(self) -> dict[str, Any]:
        """The recipe's keyword options and their defaults, then the whole-model plan's
        (``PLAN_OPTIONS``: the AdamW route's lr, decay, betas, eps) where it has an AdamW route."""
        own = {n: p.default for n, p in inspect.signature(self.recipe).parameters.items()}
        return own | (self.adamw.defaults() if self.adamw is not None else {})

    def _split(self, options: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(recipe options, plan options)``; ``TypeError`` naming the allowed ones."""
        options = dict(options or {})
        allowed = self.options()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(
                f"{self.name} got unknown option(s) {unknown}; allowed: {sorted(allowed) or 'none'}"
            )
        plan = {k: options.pop(k) for k in PLAN_OPTIONS if k in options}
        return options, plan

    def make(self, options: Mapping[str, Any] | None = None) -> Chain | Plan:
        """The recipe built with ``options`` (its chain alone, without the AdamW route)."""
        recipe_options, plan_options = self._split(options)
        if plan_options:
            raise ValueError(
                f"{sorted(plan_options)} configure the AdamW route of {self.name}'s whole-model "
                f"plan: pass an nn.Module or param groups with a 'role' key to "
                f"orthoptim.build({self.name!r}, ...)"
            )
        return self.recipe(**recipe_options)

    def whole_model_plan(self, options: Mapping[str, Any] | None = None) -> Plan:
        """The plan ``build`` uses for an ``nn.Module``: every parameter gets an update rule."""
        recipe_options, plan_options = self._split(options)
        made = self.recipe(**recipe_options)
        if isinstance(made, Plan) or self.adamw is None:
            return made if isinstance(made, Plan) else Plan.single(made)
        return with_adamw(made, name=self.name, adamw_route=self.adamw.options(plan_options))

    def default_plan(self, hidden: Chain) -> Plan:
        """The whole-model plan around ``hidden`` (e.g. a ``recipes.cautious`` variant of this
        spec's chain), with this spec's AdamW route; ``ValueError`` without one."""
        if self.adamw is None:
            raise ValueError(f"{self.name} updates every parameter itself; it has no AdamW route")
        return with_adamw(hidden, name=self.name, adamw_route=self.adamw)


_MUON_PAPER = "Jordan et al. 2024, 'Muon: An optimizer for hidden layers in neural networks' (blog)"
_NORMUON_PAPER = "Li et al. 2025, 'NorMuon: Making Muon more efficient and scalable' (2510.05491)"
_ADAMP_PAPER = (
    "Heo et al. 2021, 'AdamP: Slowing Down the Slowdown for Momentum Optimizers on "
    "Scale-invariant Weights' (2006.08217)"
)
_AUON_PAPER = (
    "Maity 2025, 'AuON: A Linear-time Alternative to Semi-Orthogonal Momentum Updates' "
    "(2509.24320v1)"
)

_MKOR_PAPER = (
    "Mozaffari, Li, Zhang, Mehri Dehnavi 2023, 'MKOR: Momentum-Enabled Kronecker-Factor-Based "
    "Optimizer Using Rank-1 Updates' (NeurIPS, 2306.01685)"
)

_ESTIMATOR_SINGLE_PROCESS = (
    "its gradient estimator re-evaluates the closure with the parameters moved, which the "
    "distributed step does not do (each rank would move and evaluate only its own)"
)

_MARS_PAPER = (
    "Yuan, Liu, Wu, Zhou, Gu 2024, 'MARS: Unleashing the Power of Variance Reduction for "
    "Training Large Models' (2411.10438)"
)

REGISTRY: tuple[Spec, ...] = (
    Spec(
        name="sgd",
        recipe=sgd,
        lr=0.01,
        paper="Sutskever et al. 2013, 'On the importance of initialization and momentum' (ICML)",
        reference="torch.optim.SGD (torch==2.13.0)",
        tags=frozenset({"baseline", "elementwise"}),
    ),
    Spec(
        name="adamw",
        recipe=adamw,
        lr=1e-3,
        weight_decay=0.01,
        paper="Loshchilov & Hutter 2019, 'Decoupled Weight Decay Regularization' (1711.05101)",
        reference="torch.optim.AdamW (torch==2.13.0)",
        tags=frozenset({"baseline", "elementwise", "adaptive"}),
    ),
    Spec(
        name="muon",
        recipe=muon,
        lr=0.02,
        paper=_MUON_PAPER,
        reference="KellerJordan/Muon muon.py; torch.optim.Muon (torch==2.13.0)",
        tags=frozenset({"orthogonal", "matrix"}),
        adamw=MUON_ADAMW,
    ),
    Spec(
        name="normuon",
        recipe=normuon,
        lr=0.02,
        paper=_NORMUON_PAPER,
        reference="zichongli5/NorMuon@d45c9a4 normuon.py normuon_update",
        tags=frozenset({"orthogonal", "matrix", "adaptive"}),
        adamw=NORMUON_ADAMW,
    ),
    Spec(
        name="auon",
        recipe=auon,
        lr=0.1,
        paper=_AUON_PAPER,
        reference="ryyzn9/AuON@bba2e82 auon/optimizer.py AuON",
        tags=frozenset({"matrix", "linear-time"}),
        adamw=AUON_ADAMW,
    ),
    Spec(
        name="hybrid_auon",
        recipe=hybrid_auon,
        lr=0.05,
        paper=_AUON_PAPER,
        reference="ryyzn9/AuON@bba2e82 auon/optimizer.py HybridAuON",
        tags=frozenset({"orthogonal", "matrix"}),
        adamw=HYBRID_AUON_ADAMW,
    ),
    Spec(
        name="muon_polar",
        recipe=muon_polar,
        lr=0.02,
        paper=(
            "Amsel, Persson, Musco, Gower 2025, 'The Polar Express: Optimal Matrix Sign Methods "
            "and Their Application to the Muon Algorithm' (2505.16932)"
        ),
        reference="KellerJordan/modded-nanogpt@f411b3d train_gpt.py polar_express",
        tags=frozenset({"orthogonal", "matrix"}),
        adamw=MUON_ADAMW,
    ),
    # -- Muon with another normalisation or NS schedule (NorMuon, AuON, Hybrid-AuON, muon_polar) --
    Spec(
        name="root",
        recipe=root,
        lr=1e-3,
        weight_decay=0.1,
        paper=(
            "He et al. 2025, 'ROOT: Robust Orthogonalized Optimizer for Neural Network Training' "
            "(2511.20626)"
        ),
        reference="huawei-noah/noah-research@aa0f80c ROOT/examples/example_train.py ROOT",
        tags=frozenset({"orthogonal", "matrix", "robust"}),
        adamw=ROOT_ADAMW,
    ),
    Spec(
        name="fismo",
        recipe=fismo,
        lr=0.02,
        paper=(
            "Xu, Yan, Zhang 2026, 'FISMO: Fisher-Structured Momentum-Orthogonalized Optimizer' "
            "(2601.21750)"
        ),
        reference="no public code; Algorithm 1 as transcribed by the zij docs (FISMO page)",
        tags=frozenset({"orthogonal", "matrix", "kronecker"}),
        adamw=MUON_ADAMW,
    ),
    Spec(
        name="muon_nalr",
        recipe=muon_nalr,
        lr=0.02,
        paper=(
            "Hao et al. 2025, 'Noise-Adaptive Layerwise Learning Rates: Accelerating "
            "Geometry-Aware Optimization for Deep Neural Network Training' (2510.14009)"
        ),
        reference="no public code; written from the abstract (see recipes.nalr.muon_nalr)",
        tags=frozenset({"orthogonal", "matrix", "adaptive"}),
        adamw=MUON_ADAMW,
        single_process_only=(
            "ScaleByLayerNoise scales each matrix by a noise level relative to all matrices of its "
            "group, and an owner rank sees only the matrices it owns"
        ),
    ),
    # -- orthogonalized momentum, robust, Fisher-whitened or noise-scaled (ROOT, FISMO, NALR) --
    Spec(
        name="shampoo",
        recipe=shampoo,
        lr=1e-3,
        weight_decay=1e-5,
        paper=(
            "Gupta, Koren, Singer 2018, 'Shampoo: Preconditioned Stochastic Tensor Optimization' "
            "(1802.09568); Shi et al. 2023, Distributed Shampoo (2309.06497)"
        ),
        reference=(
            "facebookresearch/optimizers@f606606 distributed_shampoo (Adam grafting); "
            "pytorch-optimizer==4.1.0 Shampoo"
        ),
        tags=frozenset({"matrix", "kronecker", "second-order"}),
        adamw=SHAMPOO_ADAMW,
    ),
    Spec(
        name="soap",
        recipe=soap,
        lr=3e-3,
        weight_decay=0.01,
        paper=(
            "Vyas et al. 2024, 'SOAP: Improving and Stabilizing Shampoo using Adam' (2409.11321)"
        ),
        reference="nikhilvyas/SOAP@a1e5535 soap.py; pytorch-optimizer==4.1.0 SOAP",
        tags=frozenset({"kronecker", "adaptive", "second-order", "matrix"}),
    ),
    Spec(
        name="psgd_kron",
        recipe=psgd_kron,
        lr=1e-3,
        paper=(
            "Pooladzandi, Li 2024, 'Curvature-Informed SGD via General Purpose Lie-Group "
            "Preconditioners' (2402.11858); Li 2015, PSGD (1512.04202)"
        ),
        reference=(
            "pytorch-optimizer==4.1.0 Kron (kron_torch); "
            "lixilinx/psgd_torch@a8616f1 psgd.py KronWhiten (dQ='EQ')"
        ),
        tags=frozenset({"kronecker", "second-order", "lie-group", "matrix"}),
        adamw=PSGD_ADAMW,
    ),
    Spec(
        name="psgd_lra",
        recipe=psgd_lra,
        lr=1e-2,
        paper=(
            "Pooladzandi, Li 2024, 'Curvature-Informed SGD via General Purpose Lie-Group "
            "Preconditioners' (2402.11858); Li 2015, PSGD (1512.04202)"
        ),
        reference="psgd_torch==0.6.1 psgd.py LRA (preconditioner_type='whitening')",
        tags=frozenset({"low-rank", "second-order", "lie-group", "matrix"}),
        adamw=PSGD_ADAMW,
    ),
    # -- Kronecker family (Shampoo, SOAP) --
    Spec(
        name="mkor",
        recipe=mkor,
        lr=0.05,
        paper=_MKOR_PAPER,
        reference="Mohammad-Mozaffari/mkor@3a0e3bb mkor/mkor.py MKOR",
        tags=frozenset({"kronecker", "second-order", "activations", "matrix"}),
        adamw=MKOR_ADAMW,
    ),
    Spec(
        name="mkor_h",
        recipe=mkor_h,
        lr=0.05,
        paper=_MKOR_PAPER,
        reference="no MKOR-H code in Mohammad-Mozaffari/mkor@3a0e3bb; switching rule is ours",
        tags=frozenset({"kronecker", "second-order", "activations", "hybrid", "matrix"}),
        adamw=MKOR_ADAMW,
    ),
    Spec(
        name="spd_momentum",
        recipe=spd_momentum,
        lr=1e-3,
        weight_decay=1e-2,
        paper=(
            "Lin, Duruisseaux, Leok, Nielsen, Khan, Schmidt 2023, 'Simplifying Momentum-based "
            "Positive-definite Submanifold Optimization with Applications to Deep Learning' "
            "(ICML, 2302.09738)"
        ),
        reference=(
            "yorkerlin/StructuredNGD-DL@288b20c optimizers/local_cov.py LocalOptimizer; "
            "singd==0.0.5 SINGD (dense, diagonal)"
        ),
        tags=frozenset({"kronecker", "second-order", "activations", "inverse-free", "matrix"}),
        adamw=SPD_ADAMW,
    ),
    # -- activation-Kronecker family (MKOR, MKOR-H) --
    Spec(
        name="mfac",
        recipe=mfac,
        lr=1e-2,
        paper=(
            "Frantar, Kurtic, Alistarh 2021, 'M-FAC: Efficient Matrix-Free Approximations of "
            "Second-Order Information' (2107.03356)"
        ),
        reference="IST-DASLab/M-FAC@8116367 optim.py MFAC (dynamic algorithm)",
        tags=frozenset({"second-order", "fisher", "matrix"}),
    ),
    Spec(
        name="efcp",
        recipe=efcp,
        lr=1e-2,
        paper=(
            "Modoranu, Kalinov, Kurtic, Frantar, Alistarh 2024, 'Error Feedback Can Accurately "
            "Compress Preconditioners' (2306.06098)"
        ),
        reference=(
            "IST-DASLab/EFCP@a33a3a5 optimizers/sparse/SparseGradientMFAC.py (top-k), "
            "optimizers/lowrank/low_rank_optim.py LowRankMFAC (low rank)"
        ),
        tags=frozenset({"second-order", "fisher", "compressed", "matrix"}),
    ),
    # -- M-FAC --
    Spec(
        name="oasis",
        recipe=oasis,
        lr=1.0,  # multiplies the adaptive step: 1 is the paper's (no lr to tune)
        paper=(
            "Jahani, Rusakov, Shi, Richtárik, Mahoney, Takáč 2022, 'Doubly Adaptive Scaled "
            "Algorithm for Machine Learning Using Second-Order Information' (ICLR, 2109.05198)"
        ),
        reference="from the paper (Algorithm 1): oracle only, no code of the authors found",
        tags=frozenset({"second-order", "hessian", "diagonal", "adaptive", "closure"}),
        single_process_only=(
            "it reads Hessian-vector products through step(closure) (one double backward per "
            "step), which the distributed step does not evaluate, and its step size is shared "
            "by every parameter of the model"
        ),
    ),
    # -- Hessian-diagonal, Lipschitz step size (OASIS) --
    Spec(
        name="mars_adamw",
        recipe=mars_adamw,
        lr=3e-3,
        paper=_MARS_PAPER,
        reference="AGI-Arena/MARS@4831e28 MARS/optimizers/mars.py MARS(mars_type='mars-adamw')",
        tags=frozenset({"variance-reduction", "adaptive", "matrix"}),
        # variant="exact" needs step(closure): step() without one raises before any change.
        adamw=MARS_ADAMW,
    ),
    Spec(
        name="mars_lion",
        recipe=mars_lion,
        lr=3e-4,
        paper=_MARS_PAPER,
        reference="AGI-Arena/MARS@4831e28 MARS/optimizers/mars.py MARS(mars_type='mars-lion')",
        tags=frozenset({"variance-reduction", "sign", "matrix"}),
        adamw=MARS_LION_ADAMW,
    ),
    Spec(
        name="more_momentum",
        recipe=more_momentum,
        lr=0.01,
        paper=(
            "Tondji, Kashubin, Cisse 2021, 'Variance Reduction in Deep Learning: More Momentum "
            "is All You Need' (2111.11828)"
        ),
        reference="from the paper: oracle only (the JAX code it mentions is not public)",
        tags=frozenset({"variance-reduction", "elementwise"}),
    ),
    # -- MARS family (mars_adamw, mars_lion), Discover (more_momentum) --
    Spec(
        name="grams",
        recipe=grams,
        lr=1e-3,
        paper=(
            "Cao, Li, Song 2024, 'Grams: Gradient Descent with Adaptive Momentum Scaling' "
            "(2412.17107)"
        ),
        reference="Gunale0926/Grams@f91a375 grams/src/grams.py; pytorch-optimizer==4.1.0 Grams",
        tags=frozenset({"elementwise", "adaptive", "sign"}),
    ),
    Spec(
        name="adamp",
        recipe=adamp,
        lr=1e-3,
        weight_decay=1e-2,
        paper=_ADAMP_PAPER,
        reference="clovaai/AdamP@146287b adamp/adamp.py; pytorch-optimizer==4.1.0 AdamP",
        tags=frozenset({"elementwise", "adaptive", "projection"}),
    ),
    Spec(
        name="sgdp",
        recipe=sgdp,
        lr=0.1,
        weight_decay=1e-5,
        paper=_ADAMP_PAPER,
        reference="clovaai/AdamP@146287b adamp/sgdp.py; pytorch-optimizer==4.1.0 SGDP",
        tags=frozenset({"elementwise", "projection"}),
    ),
    # -- sign and projection family (Grams, AdamP, SGDP) --
    Spec(
        name="innaprop",
        recipe=innaprop,
        lr=1e-3,
        weight_decay=0.01,
        paper=(
            "Bolte, Boustany, Pauwels, Purica et al. 2024, 'A second-order-like optimizer with "
            "adaptive gradient scaling for deep learning' (2410.05871)"
        ),
        reference="innaprop/innaprop@d4bef0c innaprop.py INNAprop",
        tags=frozenset({"elementwise", "adaptive"}),
    ),
    Spec(
        name="optimistic_amsgrad",
        recipe=optimistic_amsgrad,
        lr=1e-3,
        paper=(
            "Wang, Li, Karimi, Li 2021, 'An Optimistic Acceleration of AMSGrad for Nonconvex "
            "Optimization' (ACML, 1903.01435)"
        ),
        reference=(
            "Algorithms 2 and 3 of the paper; Hintonthu/optimistic-amsgrad@07fd55e "
            "Optadam_torch.py (its guess differs: see the recipe)"
        ),
        tags=frozenset({"elementwise", "adaptive"}),
    ),
    Spec(
        name="gravity",
        recipe=gravity,
        lr=0.1,
        paper=(
            "Bahrami, Zadeh 2021, 'Gravity Optimizer: a Kinematic Approach on Optimization in "
            "Deep Learning' (2101.09192)"
        ),
        reference=(
            "dariush-bahrami/gravity.optimizer@9c12068 "
            "implementations/gravity_optimizer_pytorch.py; pytorch-optimizer==4.1.0 Gravity"
        ),
        tags=frozenset({"elementwise"}),
    ),
    # -- first-order neighbours of issue 21 (INNAprop, Optimistic AMSGrad, Gravity) --
    Spec(
        name="induced_metric",
        recipe=induced_metric,
        lr=0.1,
        paper=(
            "Harvey 2025, 'The Optimiser Hidden in Plain Sight: Training with the Loss "
            "Landscape's Induced Metric' (2509.03594)"
        ),
        reference="harveyThomas4692/Induced-Metric-Optimiser@754ae88 optimisers/torch_imp.py",
        tags=frozenset({"matrix", "clipping"}),
    ),
    # -- induced metric (any base under the loss graph's metric) --
    Spec(
        name="frugal",
        recipe=frugal,
        lr=1e-3,
        paper=(
            "Zmushko et al. 2024, 'FRUGAL: Memory-Efficient Optimization by Reducing State "
            "Overhead for Scalable Training' (2411.07837)"
        ),
        reference=(
            "FRUGAL authors' code @c7ebe4c (fork hungquangbui02022003/FRUGAL) "
            "frugal/proj_optimizer_templates.py BlockOptimizer"
        ),
        tags=frozenset({"matrix", "low-rank", "adaptive"}),
        adamw=LOWRANK_ADAMW,
    ),
    Spec(
        name="lowrank_adamw",
        recipe=lowrank_adamw,
        lr=1e-3,
        paper=(
            "Modoranu et al. 2025, 'SVD-Free Low-Rank Adaptive Gradient Optimization for Large "
            "Language Models' (2505.17967); Zhao et al. 2024, GaLore (2403.03507)"
        ),
        reference=(
            "jiaweizzhao/GaLore@1317b5f galore_torch/adamw.py; ista-daslab-optimizers==1.1.15 "
            "DCTAdamW"
        ),
        tags=frozenset({"matrix", "low-rank", "adaptive"}),
        adamw=LOWRANK_ADAMW,
    ),
    # -- low-rank family (FRUGAL, low-rank AdamW) --
    Spec(
        name="smb",
        recipe=smb,
        lr=0.5,
        paper=(
            "Birbil, Martin, Onay, Oztoprak 2021, 'Bolstering Stochastic Gradient Descent with "
            "Model Building' (2111.07058)"
        ),
        reference="sibirbil/SMB@17fb8ba source/smbsolve/smb.py SMB (independent_batch=False)",
        tags=frozenset({"closure", "line-search", "second-order"}),
        single_process_only=(
            "its trial step moves every parameter and tests the loss of the closure's batch, "
            "which each rank would do on its own"
        ),
    ),
    # -- closure-based model building (SMB) --
    Spec(
        name="saddle_free_newton",
        recipe=saddle_free_newton,
        lr=1.0,
        paper=(
            "Dauphin, Pascanu, Gulcehre, Cho, Ganguli, Bengio 2014, 'Identifying and attacking "
            "the saddle point problem in high-dimensional non-convex optimization' (NeurIPS, "
            "1406.2572; workshop version 1405.4604)"
        ),
        reference="from the paper: oracle only (no authors' code found)",
        tags=frozenset({"second-order", "hessian", "krylov", "closure"}),
        single_process_only=(
            "one Krylov space spans the whole model, built from Hessian-vector products of the "
            "closure's graph and a line search on its loss, which each rank would do on its own "
            "batch and shard"
        ),
        # one 200-step lm run took 311 s against AdamW's 3 s (2026-12-06, 2-core CPU): the
        # lm sweep alone would take about an hour
        race_tasks=("digits", "quadratic", "matrix_sensing"),
    ),
    # -- Hessian (saddle-free Newton) --
    Spec(
        name="deepzero",
        recipe=deepzero,
        lr=0.1,
        weight_decay=5e-4,
        paper=(
            "Chen, Zhang, Jia, Diffenderfer, Liu, Parasyris, Zhang, Zhang, Kailkhura, Liu 2024, "
            "'DeepZero: Scaling up Zeroth-Order Optimization for Deep Model Training' (ICLR, "
            "2310.02025)"
        ),
        reference=(
            "OPTML-Group/DeepZero@5cf30b1 algorithm/zoo/gradient_estimate.py cge, "
            "algorithm/prune/importance_scores.py zoo_grasp_importance_score (naive oracle)"
        ),
        tags=frozenset({"zeroth-order", "sparse"}),
        single_process_only=(
            "each evaluation moves one coordinate of one parameter and re-runs the closure, "
            "which DDP or FSDP2 would run on every rank with its own batch"
        ),
        race_tasks=("digits",),
    ),
    # -- zeroth-order (DeepZero) --
    Spec(
        name="sam",
        recipe=sam,
        lr=0.1,
        weight_decay=5e-4,
        paper=(
            "Foret, Kleiner, Mobahi, Neyshabur 2021, 'Sharpness-Aware Minimization for "
            "Efficiently Improving Generalization' (ICLR, 2010.01412); Kwon et al. 2021, ASAM "
            "(2102.11600)"
        ),
        reference="davda54/sam@3c3afdb sam.py SAM; pytorch-optimizer==4.1.0 SAM",
        tags=frozenset({"sharpness", "wrapper"}),
        single_process_only=_ESTIMATOR_SINGLE_PROCESS,
    ),
    Spec(
        name="gam",
        recipe=gam,
        # The code's lr 0.1 and weight decay 5e-4 on its direction, twice ours (recipes.gam).
        lr=0.2,
        weight_decay=2.5e-4,
        paper=(
            "Zhang, Xu, Yu, Zou, Cui 2023, 'Gradient Norm Aware Minimization Seeks First-Order "
            "Flatness and Improves Generalization' (CVPR, 2303.03108)"
        ),
        reference="xxgege/GAM@694133d gam/gam.py GAM (accelerated, Algorithm 2)",
        tags=frozenset({"sharpness", "wrapper"}),
        single_process_only=_ESTIMATOR_SINGLE_PROCESS,
    ),
    Spec(
        name="fd_gradreg",
        recipe=fd_gradreg,
        lr=0.1,
        weight_decay=5e-4,
        paper=(
            "Karakida, Takase, Hayase, Osawa 2023, 'Understanding Gradient Regularization in "
            "Deep Learning: Efficient Finite-Difference Computation and Implicit Bias' (ICML, "
            "2210.02720)"
        ),
        reference="no public code; the paper's F-GR formula (oracle only)",
        tags=frozenset({"sharpness", "wrapper"}),
        single_process_only=_ESTIMATOR_SINGLE_PROCESS,
    ),
    # -- sharpness-aware wrappers (SAM/ASAM, GAM, finite-difference gradient regularisation) --
)
