"""Published claims to print beside measured figures, keyed by registry name.

Copied verbatim from the abstracts catalogued in ``/shared/design/PAPERS.md`` (section 1, table
1a, and section 3a), with the scale at which each was measured. A claim prints when its optimizer
races, next to the measured steps- and time-to-target ratios against each baseline it names, so
an optimizer that joins the registry under one of these names gets its claim shown
automatically. Qualitative claims are marked as such: they state a direction, not a number.
PAPERS.md makes no claim for ``sgd``, ``adamw``, ``muon`` or ``muon_adamw`` (AdamW and Muon
appear there only as baselines), nor for ``muon_polar`` (Polar Express is not in its seeds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Claim:
    """One published claim.

    Args:
        optimizer: registry name of the claimed optimizer.
        text: the claim, verbatim from the abstract.
        scale: where it was measured.
        versus: registry names of the baselines it is relative to.
        quantitative: whether it states a number.
        source: where PAPERS.md records it.
    """

    optimizer: str
    text: str
    scale: str
    versus: tuple[str, ...]
    quantitative: bool
    source: str


_NORMUON = "PAPERS.md C1 (NorMuon, 2510.05491, seed 000)"
_AUON = "PAPERS.md C3 (AuON, 2509.24320v1, seed 000)"
_AUON_TEXT = "comparable to strong baselines such as AdamW and Muon"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        optimizer="normuon",
        text="21.74% better training efficiency than Adam",
        scale="1.1 B pretraining setting",
        versus=("adamw",),
        quantitative=True,
        source=_NORMUON,
    ),
    Claim(
        optimizer="normuon",
        text="11.31% improvement over Muon",
        scale="1.1 B pretraining setting",
        versus=("muon",),
        quantitative=True,
        source=_NORMUON,
    ),
    Claim(
        optimizer="root",
        text="significantly improved robustness, with faster convergence and superior final "
        "performance compared to both Muon and Adam-based optimizers, particularly in noisy and "
        "non-convex scenarios",
        scale="not stated in the abstract",
        versus=("muon", "adamw"),
        quantitative=False,
        source="PAPERS.md C2 (ROOT, 2511.20626, seed 000)",
    ),
    Claim(
        optimizer="auon",
        text=_AUON_TEXT,
        scale="vision and language benchmarks",
        versus=("adamw", "muon"),
        quantitative=False,
        source=_AUON,
    ),
    Claim(
        optimizer="hybrid_auon",
        text=_AUON_TEXT,
        scale="vision and language benchmarks",
        versus=("adamw", "muon"),
        quantitative=False,
        source=_AUON,
    ),
    Claim(
        optimizer="muon_nalr",
        text="substantially accelerate DNN training compared to methods that use fixed "
        "learning rates within each group",
        scale="LLaMA and GPT",
        versus=("muon",),
        quantitative=False,
        source="PAPERS.md C4 (noise-adaptive layerwise learning rates, seed 002)",
    ),
    Claim(
        optimizer="fismo",
        text="superior training efficiency and final performance",
        scale="image classification and language modeling benchmarks (baseline not named)",
        versus=("muon", "adamw"),
        quantitative=False,
        source="PAPERS.md C5 (FISMO, 2601.21750, seed 003)",
    ),
    Claim(
        optimizer="soap",
        text="reduces the number of iterations by over 40% and wall clock time by over 35% "
        "compared to AdamW",
        scale="360m and 660m language models, large batch regime",
        versus=("adamw",),
        quantitative=True,
        source="PAPERS.md C6 (SOAP, seed 004)",
    ),
)

UNCLAIMED_NOTE = (
    "PAPERS.md lists no claim for sgd, adamw, muon, muon_adamw or muon_polar "
    "(AdamW and Muon appear there only as baselines of other papers)."
)


def claims_for(names: list[str]) -> list[Claim]:
    """The claims about optimizers in ``names``."""
    return [c for c in CLAIMS if c.optimizer in names]
