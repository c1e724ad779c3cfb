"""Named Newton-Schulz coefficient presets, each with its provenance.

A preset is a schedule of odd quintic polynomials ``p(x) = a x + b x^3 + c x^5``, one triple per
iteration. When more iterations are asked for than the schedule lists, the last triple repeats
(the Polar Express paper's rule; for a one-triple schedule it is Keller Jordan's "same triple every
step"). ``norm_safety`` multiplies the Frobenius norm in the pre-normalisation, so that the top
singular value lands a little below 1 where the first polynomial is tuned for it.

``band`` is the singular-value interval the preset promises after its default number of steps.
It was measured with float32 compute on inputs with a log-spaced spectrum from 1 down to 1e-3
(random orthogonal U, V) at shapes 64x64, 128x128, 64x256, 256x64 and 128x512, and on Gaussian
inputs at the non-square shapes 64x256, 256x64 and 128x512, seeds 0 to 4; the measured interval
was widened to two decimals (lower end rounded down, upper end rounded up).
``tests/functional/test_coefficients.py`` re-measures it on the same inputs and fails if a
singular value leaves the band. The lower end depends on ``sigma_min(X) / ||X||_F`` (the
smallest singular value the iteration sees after pre-normalisation), not on the condition number
alone: it is at least 3.2e-4 on every measured input, and the band is stated for inputs meeting
that bound (with condition number 1e3, a log-spaced spectrum meets it up to 128 singular values,
other spectra may not). Square Gaussian matrices fall outside it (their ratio is down to 9e-6 at
128x128, seed 1) and are listed separately, with the bfloat16 measurements, in the table next to
``PRESETS``.

A *shape-keyed* preset (``SHAPE_KEYED_PRESETS``) holds one triple per matrix shape instead of one
schedule for every matrix; ``resolve_preset(name, rows, cols)`` turns any preset name into the
``CoefficientPreset`` a ``rows x cols`` matrix uses, so ``Orthogonalize(coeffs=...)`` stays one
unambiguous name. Shapes missing from the table use the preset's ``fallback`` (a plain preset).
"""

from __future__ import annotations

from dataclasses import dataclass

Triple = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class CoefficientPreset:
    """A named Newton-Schulz schedule.

    Args:
        name: the preset's name (the value of ``Orthogonalize.coeffs``).
        triples: ``(a, b, c)`` per iteration; the last one repeats past the end.
        norm_safety: the pre-normalisation divides by ``norm_safety * ||X||_F``.
        default_steps: the number of iterations the provenance uses.
        band: measured ``(sigma_min, sigma_max)`` after ``default_steps`` iterations.
        provenance: where the numbers come from.
    """

    name: str
    triples: tuple[Triple, ...]
    norm_safety: float
    default_steps: int
    band: tuple[float, float]
    provenance: str

    def schedule(self, steps: int) -> tuple[Triple, ...]:
        """The triples for ``steps`` iterations (the last triple repeats past the end)."""
        if steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {steps}")
        listed = self.triples[:steps]
        return listed + (self.triples[-1],) * (steps - len(listed))


def _with_polar_express_safety(triples: tuple[Triple, ...], safety: float) -> tuple[Triple, ...]:
    # The paper divides p(x) = a x + b x^3 + c x^5 by the safety factor in x, i.e. p(x / s) * ...;
    # concretely (a/s, b/s^3, c/s^5), on every polynomial but the final fixed point.
    scaled = tuple((a / safety, b / safety**3, c / safety**5) for a, b, c in triples[:-1])
    return (*scaled, triples[-1])


_POLAR_EXPRESS_PAPER_RAW: tuple[Triple, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)

# Singular values after default_steps, min and max over seeds 0-4 (module docstring for the
# inputs), rounded to 3 decimals. "Gaussian square" (64x64, 128x128) is outside the band's domain.
#
# preset                        inputs                          float32          bfloat16
# keller_quintic                Gaussian 64x256/256x64/128x512  [0.682, 1.134]   [0.679, 1.138]
#                               log-spaced 1..1e-3, all shapes  [0.155, 1.202]   [0.127, 1.203]
#                               Gaussian square                 [0.005, 1.202]   [0.009, 1.202]
# you_quintic                   Gaussian 64x256/256x64/128x512  [0.978, 1.032]   [0.975, 1.034]
#                               log-spaced 1..1e-3, all shapes  [0.158, 1.145]   [0.136, 1.146]
#                               Gaussian square                 [0.005, 1.145]   [0.004, 1.145]
# polar_express_paper           Gaussian 64x256/256x64/128x512  [1.000, 1.000]   [0.996, 1.005]
#                               log-spaced 1..1e-3, all shapes  [0.989, 1.000]   [0.969, 1.004]
#                               Gaussian square                 [0.058, 1.000]   [0.108, 1.005]
# polar_express_modded_nanogpt  Gaussian 64x256/256x64/128x512  [0.859, 1.141]   [0.857, 1.142]
#                               log-spaced 1..1e-3, all shapes  [0.307, 1.141]   [0.259, 1.143]
#                               Gaussian square                 [0.009, 1.141]   [0.027, 1.143]
PRESETS: dict[str, CoefficientPreset] = {
    preset.name: preset
    for preset in (
        CoefficientPreset(
            name="keller_quintic",
            triples=((3.4445, -4.7750, 2.0315),),
            norm_safety=1.0,
            default_steps=5,
            band=(0.15, 1.21),
            provenance=(
                "Keller Jordan, 'Muon: An optimizer for hidden layers' (2024), "
                "KellerJordan/Muon muon.py zeropower_via_newtonschulz5; also torch.optim.Muon's "
                "default ns_coefficients"
            ),
        ),
        CoefficientPreset(
            name="you_quintic",
            triples=(
                (4.0848, -6.8946, 2.9270),
                (3.9505, -6.3029, 2.6377),
                (3.7418, -5.5913, 2.3037),
                (2.8769, -3.1427, 1.2046),
                (2.8366, -3.0525, 1.2012),
            ),
            norm_safety=1.0,
            default_steps=5,
            band=(0.15, 1.15),
            provenance=(
                "You Jiacheng's per-step schedule (2025), used by microsoft/dion as its "
                "Newton-Schulz fallback; called 'quintic' in pytorch-optimizer, timm and NVIDIA "
                "emerging-optimizers and 'dion' in optax contrib"
            ),
        ),
        CoefficientPreset(
            name="polar_express_paper",
            triples=_with_polar_express_safety(_POLAR_EXPRESS_PAPER_RAW, 1.01),
            norm_safety=1.01,
            default_steps=8,
            band=(0.98, 1.01),
            provenance=(
                "Amsel, Persson, Musco, Gower, 'The Polar Express' (arXiv 2505.16932), "
                "Algorithm 1: degree-5 optimal schedule with safety factor 1.01 on all but the "
                "last polynomial and ||X||_F * 1.01 pre-normalisation"
            ),
        ),
        CoefficientPreset(
            name="polar_express_modded_nanogpt",
            triples=(
                (8.156554524902461, -22.48329292557795, 15.878769915207462),
                (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
            ),
            norm_safety=1.02,
            default_steps=5,
            band=(0.30, 1.15),
            provenance=(
                "Polar Express schedule recomputed with safety 2e-2 and cushion 2 for 5 steps, as "
                "used by KellerJordan/modded-nanogpt train_gpt.py and microsoft/dion "
                "polar_express.py, with ||X||_F * 1.02 pre-normalisation (the references add "
                "eps 1e-6 to the norm: Orthogonalize(eps=1e-6) matches them)"
            ),
        ),
    )
}

COEFFICIENT_PRESETS: tuple[str, ...] = tuple(PRESETS)


def get_preset(name: str) -> CoefficientPreset:
    """The preset called ``name``; ``ValueError`` naming the allowed presets otherwise."""
    if name in SHAPE_KEYED_PRESETS:
        raise ValueError(
            f"{name!r} is a shape-keyed preset: use resolve_preset({name!r}, rows, cols)"
        )
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown Newton-Schulz coefficient preset {name!r}; allowed: {', '.join(PRESETS)}"
        ) from None


@dataclass(frozen=True, slots=True)
class ShapeKeyedPreset:
    """Coefficients chosen per matrix shape, with a plain preset for shapes not in the table.

    An entry is keyed by ``(min(rows, cols), max(rows, cols))`` (orientation does not matter: the
    iteration runs on the wide orientation) and holds one triple, repeated for every iteration.

    Args:
        name: the preset's name (the value of ``Orthogonalize.coeffs``).
        table: ``((short, long), (a, b, c), band)`` per shape; ``band`` is the range of the
            composed scalar polynomial after ``default_steps`` on ``[3.2e-4, 1] / norm_safety``
            (the domain of the plain presets' bands), computed in float64.
        fallback: the plain preset used for shapes not in the table.
        norm_safety: as for ``CoefficientPreset``.
        default_steps: the number of iterations the table was published for.
        provenance: where the numbers come from.
    """

    name: str
    table: tuple[tuple[tuple[int, int], Triple, tuple[float, float]], ...]
    fallback: str
    norm_safety: float
    default_steps: int
    provenance: str

    def __post_init__(self) -> None:
        if self.fallback not in PRESETS:
            raise ValueError(
                f"fallback must be one of {COEFFICIENT_PRESETS}, got {self.fallback!r}"
            )

    def for_shape(self, rows: int, cols: int) -> CoefficientPreset:
        """The plain preset a ``rows x cols`` matrix uses (the fallback when not in the table)."""
        key = (min(rows, cols), max(rows, cols))
        for shape, triple, band in self.table:
            if shape == key:
                return CoefficientPreset(
                    name=f"{self.name}[{key[0]}x{key[1]}]",
                    triples=(triple,),
                    norm_safety=self.norm_safety,
                    default_steps=self.default_steps,
                    band=band,
                    provenance=self.provenance,
                )
        return PRESETS[self.fallback]


# ROOT's table (``COEFF_MAP_CANONICAL`` in ``root5``). Measured against keller_quintic in
# tests/recipes/test_root.py (exact arithmetic, 5 steps): on Gaussian inputs of each shape
# (Marchenko-Pastur spectrum) ROOT's relative Frobenius error ||NS(X) - UV^T||_F / ||UV^T||_F is
# lower at every shape (2048x2048 0.198 vs 0.223, x3072 0.128 vs 0.184, x8192 0.039 vs 0.184,
# x16384 0.063 vs 0.206); on log-spaced spectra (1 .. 1e-3) it is higher at x8192 (0.605 vs
# 0.529) and x16384 (0.566 vs 0.529). The 2048x2048 triple's polynomial peaks (1.226) above its
# repelling fixed point (1.2236), so a singular value that lands on the peak grows: after 5 steps
# the range over the band domain reaches 3.31 (from x = 0.559), and 6 steps reach 679. Keep
# ns_steps at 5 with this preset.
SHAPE_KEYED_PRESETS: dict[str, ShapeKeyedPreset] = {
    preset.name: preset
    for preset in (
        ShapeKeyedPreset(
            name="root_shape_map",
            table=(
                ((2048, 2048), (3.4916, -4.8224, 2.1095), (0.16, 3.32)),
                ((2048, 3072), (3.4509, -4.5790, 1.9325), (0.15, 1.24)),
                ((2048, 8192), (2.9794, -3.6674, 1.6207), (0.07, 1.13)),
                ((2048, 16384), (3.1943, -3.8221, 1.5322), (0.10, 1.22)),
            ),
            fallback="keller_quintic",
            norm_safety=1.0,
            default_steps=5,
            provenance=(
                "He et al., 'ROOT: Robust Orthogonalized Optimizer for Neural Network Training' "
                "(arXiv 2511.20626), AdaNewton; huawei-noah/noah-research@aa0f80c "
                "ROOT/examples/example_train.py root5 COEFF_MAP_CANONICAL, keyed by "
                "(min(rows, cols), max(rows, cols)), one triple for every iteration; other shapes "
                "fall back to Keller's triple as the reference does (it logs a warning)"
            ),
        ),
    )
}

SHAPE_KEYED_PRESET_NAMES: tuple[str, ...] = tuple(SHAPE_KEYED_PRESETS)
PRESET_NAMES: tuple[str, ...] = COEFFICIENT_PRESETS + SHAPE_KEYED_PRESET_NAMES
"""Every value ``Orthogonalize(coeffs=...)`` accepts: plain and shape-keyed presets."""


def resolve_preset(name: str, rows: int, cols: int) -> CoefficientPreset:
    """The plain preset a ``rows x cols`` matrix uses under preset ``name`` (plain or
    shape-keyed); ``ValueError`` naming the allowed presets otherwise."""
    keyed = SHAPE_KEYED_PRESETS.get(name)
    if keyed is not None:
        return keyed.for_shape(rows, cols)
    if name in PRESETS:
        return PRESETS[name]
    raise ValueError(
        f"unknown Newton-Schulz coefficient preset {name!r}; allowed: {', '.join(PRESET_NAMES)}"
    )
