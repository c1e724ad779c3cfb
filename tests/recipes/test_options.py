"""``recipes.options``: recipe defaults read from where they are written, variant signatures."""

from __future__ import annotations

import inspect

import pytest

from orthoptim.recipes import (
    auon,
    frugal,
    hybrid_auon,
    lowrank_adamw,
    mkor,
    mkor_h,
    muon,
    muon_nalr,
    muon_polar,
    normuon,
)
from orthoptim.recipes.options import default, extends
from orthoptim.transforms import Orthogonalize


def test_default_reads_a_field_or_a_keyword() -> None:
    assert default(Orthogonalize, "ns_steps") == Orthogonalize().ns_steps
    assert default(muon, "momentum") == inspect.signature(muon).parameters["momentum"].default
    with pytest.raises(TypeError, match="no default for 'nope'"):
        default(Orthogonalize, "nope")
    with pytest.raises(TypeError, match="no default for 'nope'"):
        default(muon, "nope")


def options(recipe) -> dict[str, object]:
    return {n: p.default for n, p in inspect.signature(recipe).parameters.items()}


def test_variants_show_their_base_options() -> None:
    base = options(muon)
    assert options(muon_polar) == base | {"coeffs": "polar_express_modded_nanogpt", "eps": 1e-6}
    assert list(options(normuon)) == ["momentum", "beta2", "normalize_neurons", *list(base)[1:]]
    nalr = options(muon_nalr)
    assert list(nalr)[:-3] == [n for n in base if n not in ("pre_norm", "eps")]
    assert list(nalr)[-3:] == ["noise_beta", "noise_reference", "nuclear_norm"]
    assert list(options(mkor_h))[:-3] == list(options(mkor))
    assert list(options(hybrid_auon)) == [
        *[n for n in options(auon) if n != "normalize"],
        "coeffs",
        "ns_steps",
        "compute_dtype",
    ]
    low = options(lowrank_adamw)
    assert options(frugal) == {k: v for k, v in low.items() if k != "scale"} | {
        "projection": "blocks",
        "refresh_moments": "reset",
        "residual": "sign_sgd",
        "residual_scale": 1.0,
    }
    assert list(options(frugal))[4:6] == ["residual", "residual_scale"]


def test_extends_binds_like_a_keyword_only_function() -> None:
    def base(*, a: int = 1, b: int = 2) -> tuple[int, ...]:
        return (a, b)

    @extends(base, b=5)
    def variant(*, c: int = 3, **rest: int) -> tuple[int, ...]:
        return (*base(**rest), c)

    assert variant() == (1, 5, 3)
    assert variant(a=0, c=9) == (0, 5, 9)
    with pytest.raises(TypeError, match=r"^variant\(\) got an unexpected keyword argument 'd'$"):
        variant(d=1)
    with pytest.raises(TypeError):
        variant(1)
    with pytest.raises(TypeError, match="not options of base"):
        extends(base, z=1)(variant)
