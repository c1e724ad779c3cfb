"""Distributed steps on 2 gloo ranks (one pair of processes for the whole module) against the
single-process run on the same global batch, for every registered optimizer.

Under FSDP2 the shards run the eager chain, so the reference there is built with
``fast_paths=False`` (the fused AdamW kernel equals the eager chain only to round-off); under
DDP element-wise groups run the shell's own group step, fast paths included.

Tolerance of matrix routes: an owner stacks only the same-shape matrices it owns, a single
process all of them, and a batched matmul may block a different stack size differently; with
Orthogonalize computing in bfloat16, one flipped rounding of the polar factor moves a parameter
by lr * 2^-8 per step, so STEPS * lr * 2^-8 bounds it. Element-wise routes run the same
operations on the same numbers and must be bit-exact. Both are measured at 0 on this machine
(printed with -s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor

from orthoptim.distributed import assign_owners
from orthoptim.recipes import adamw, muon
from orthoptim.registry import REGISTRY, build, get
from tests.distributed import workers as W
from tests.distributed.harness import Ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

# A default plan that needs a whole route in one step (induced_metric's scope="model") is
# refused under a distributed step like a single_process_only spec.
DISTRIBUTABLE = [
    s.name
    for s in REGISTRY
    if s.single_process_only is None and not s.needs_module and not s.whole_model_plan().route_wide
]
SINGLE_ONLY = [s.name for s in REGISTRY if s.name not in DISTRIBUTABLE]
MODES = ("ddp", "fsdp")


def tolerance(name: str) -> float:
    return W.STEPS * get(name).lr * 2.0**-8


@pytest.fixture(scope="module")
def ranks() -> Iterator[Ranks]:
    pair = Ranks()
    yield pair
    pair.close()


@pytest.fixture(scope="module")
def runs(ranks: Ranks) -> dict[str, list[dict[str, dict[str, Tensor]]]]:
    return {mode: ranks.run(W.run, mode, DISTRIBUTABLE, torch.float32, 1) for mode in MODES}


def compare(name: str, got: dict[str, Tensor], want: dict[str, Tensor]) -> tuple[float, float]:
    """Max abs difference over element-wise-route and matrix-route parameters."""
    matrices = W.matrix_names(name)
    diffs = {n: (got[n].double() - want[n].double()).abs().max().item() for n in want}
    elementwise = max((d for n, d in diffs.items() if n not in matrices), default=0.0)
    matrix = max((d for n, d in diffs.items() if n in matrices), default=0.0)
    return elementwise, matrix


# -- single process -------------------------------------------------------------------------------


def test_lpt_is_deterministic_and_balanced() -> None:
    costs = [5.0, 4.0, 3.0, 3.0, 3.0, 1.0]
    owners = assign_owners(costs, 2)
    assert owners == assign_owners(costs, 2) == [0, 1, 1, 0, 1, 0]
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(2)]
    assert max(loads) <= 4 / 3 * sum(costs) / 2  # Graham's bound against the ideal split
    loads_before = [0.0, 0.0]
    assign_owners([2.0], 2, loads_before)
    assert assign_owners([1.0], 2, loads_before) == [1]  # later parameters keep earlier owners


def test_chain_core_finds_the_matrix_core() -> None:
    chain = muon()  # Momentum > Orthogonalize > ScaleByShape > AddWeightDecay
    assert chain.core == (1, 3)
    assert adamw().core == (2, 2)


def test_single_process_has_no_distributed_step() -> None:
    assert build("muon", W.model()).distributed is None
    with pytest.raises(ValueError, match="process_group was given"):
        build("muon", W.model(), process_group=object())


# -- two ranks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", DISTRIBUTABLE)
def test_equals_single_process(runs: dict[str, list[Any]], mode: str, name: str) -> None:
    want = W.reference(name, torch.float32, fast_paths=mode == "ddp")
    for rank, out in enumerate(runs[mode]):
        elementwise, matrix = compare(name, out[name], want)
        print(f"{name} {mode} rank {rank}: element-wise {elementwise:.2e}, matrix {matrix:.2e}")
        assert elementwise == 0.0
        assert matrix <= tolerance(name)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_accumulation_and_bf16(ranks: Ranks, mode: str) -> None:
    """Two micro-batches per step (DDP ``no_sync``, FSDP2 ``set_requires_gradient_sync``), and
    bfloat16 parameters. CPU kernels round a bf16 ``add_``/``lerp_`` differently in their
    vectorised body and their scalar tail, so a shard (a different length) may land one bf16
    ulp away from the full tensor: under FSDP2, bf16 parameters match within one ulp of the
    largest parameter per step, ``STEPS * 2^-8 * max|p|`` (measured: 1 ulp)."""
    names = ["muon", "normuon", "adamw"]
    for dtype, micros in ((torch.float32, 2), (torch.bfloat16, 1)):
        out = ranks.run(W.run, mode, names, dtype, micros)
        for name in names:
            want = W.reference(name, dtype, micros=micros, fast_paths=mode == "ddp")
            assert all(p.dtype == dtype for p in out[0][name].values())
            elementwise, matrix = compare(name, out[0][name], want)
            print(f"{name} {mode} {dtype} micro-batches {micros}: {elementwise:.2e} {matrix:.2e}")
            if dtype == torch.bfloat16 and mode == "fsdp":
                largest = max(t.abs().max().item() for t in want.values())
                assert max(elementwise, matrix) <= W.STEPS * 2.0**-8 * largest
            else:
                assert elementwise == 0.0
                assert matrix <= tolerance(name)


def test_mixed_precision_policy_runs_and_ranks_agree(ranks: Ranks) -> None:
    out = ranks.run(W.mixed_precision)
    for n, t in out[0].items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
        assert torch.equal(t, out[1][n])
    assert any(not torch.equal(t, W.model().state_dict()[n]) for n, t in out[0].items())


@pytest.mark.parametrize("mode", MODES)
def test_dcp_resume_and_reshard(ranks: Ranks, tmp_path: Path, mode: str) -> None:
    """Save after 2 steps, take step 3: resumed at 2 ranks (bit-exact), at 1 rank from the
    2-rank checkpoint and at 2 ranks from a 1-rank checkpoint (within the matrix tolerance)."""
    for name in DISTRIBUTABLE:
        two, one = str(tmp_path / f"{name}-2"), str(tmp_path / f"{name}-1")
        uninterrupted = ranks.run(W.dcp_save, mode, name, two, 2)[0]
        resumed = ranks.run(W.dcp_resume, mode, name, two, 2)[0]
        to_one = W.single_resume(name, two, 2, mode == "ddp")
        single = W.single_save(name, one, 2, mode == "ddp")
        to_two = ranks.run(W.dcp_resume, mode, name, one, 2)[0]
        assert all(torch.equal(resumed[n], t) for n, t in uninterrupted.items()), name
        for got, want, label in ((to_one, uninterrupted, "2->1"), (to_two, single, "1->2")):
            elementwise, matrix = compare(name, got, want)
            print(f"{name} {mode} {label}: {elementwise:.2e} {matrix:.2e}")
            assert elementwise == 0.0, (name, label)
            assert matrix <= tolerance(name), (name, label)


@pytest.mark.parametrize("mode", MODES)
def test_frugal_releases_moments_and_resumes_across_a_switch(
    ranks: Ranks, tmp_path: Path, mode: str
) -> None:
    """FRUGAL's state-free matrices hold no moments on any rank (only the state-full matrix's
    owner holds its moments), and a checkpoint saved before a switch (DCP, and a consolidated
    ``opt.state_dict()`` under DDP) resumes bit for bit into a fresh optimizer."""
    out = ranks.run(W.frugal_switch, mode, str(tmp_path / "frugal"))
    m = W.model()
    positions = build("frugal", m).positions
    # the route of 2 matrices, descending: fc2 state-full at steps 1-2, fc1 at steps 3-4
    assert [positions[id(m.fc1.weight)], positions[id(m.fc2.weight)]] == [(0, 2), (1, 2)]
    assert sorted(r["moments"] for r in out) == [0, 2 * 13 * 8]
    for rank_out in out:
        for form in ("dcp", "full") if mode == "ddp" else ("dcp",):
            got, want = rank_out[form], rank_out["straight"]
            assert all(torch.equal(got[n], t) for n, t in want.items()), (mode, form)


FULL_FORMS = (("ddp", "set"), ("ddp", "load"), ("fsdp", "set"), ("fsdp", "load"))


@pytest.mark.parametrize(("mode", "form"), FULL_FORMS)
def test_consolidated_checkpoints_are_complete_and_resume_at_any_world_size(
    ranks: Ranks, tmp_path: Path, mode: str, form: str
) -> None:
    """A consolidated checkpoint ("set": ``get_state_dict(full_state_dict=True, cpu_offload=
    True)`` restored by ``set_state_dict``; "load": ``opt.state_dict()`` on every rank restored
    by ``opt.load_state_dict``) holds every buffer of every parameter, whichever rank owns it,
    and resumes bit-exactly at 2 ranks, and at 1 process from 2 ranks and at 2 ranks from 1
    process within the matrix tolerance. FSDP2's own ``opt.state_dict()`` keeps DTensor shards
    (DCP's form), so under FSDP2 "load" is the 1-process checkpoint loaded into 2 ranks."""
    for name in DISTRIBUTABLE:
        two, one = str(tmp_path / f"{name}-2.pt"), str(tmp_path / f"{name}-1.pt")
        single = W.single_full_save(name, one, 2, form, fast_paths=mode == "ddp")
        checks = [("1->2", ranks.run(W.full_resume, mode, name, one, 2, form)[0], single)]
        if (mode, form) != ("fsdp", "load"):
            uninterrupted = ranks.run(W.full_save, mode, name, two, 2, form)[0]
            assert W.saved_buffers(two) == W.saved_buffers(one), name
            resumed = ranks.run(W.full_resume, mode, name, two, 2, form)[0]
            assert all(torch.equal(resumed[n], t) for n, t in uninterrupted.items()), name
            to_one = W.single_full_resume(name, two, 2, form, fast_paths=mode == "ddp")
            checks.append(("2->1", to_one, uninterrupted))
        for label, got, want in checks:
            elementwise, matrix = compare(name, got, want)
            print(f"{name} {mode} {form} {label}: {elementwise:.2e} {matrix:.2e}")
            assert elementwise == 0.0, (name, label)
            assert matrix <= tolerance(name), (name, label)


@pytest.mark.parametrize(("saved", "resumed"), [("fsdp", "ddp"), ("ddp", "fsdp")])
def test_a_consolidated_checkpoint_moves_between_fsdp2_and_ddp(
    ranks: Ranks, tmp_path: Path, saved: str, resumed: str
) -> None:
    """Within the tolerance: FSDP2's shards run the eager chain, DDP the fused AdamW kernel."""
    for name in DISTRIBUTABLE:
        path = str(tmp_path / f"{name}.pt")
        uninterrupted = ranks.run(W.full_save, saved, name, path, 2, "set")[0]
        got = ranks.run(W.full_resume, resumed, name, path, 2, "set")[0]
        elementwise, matrix = compare(name, got, uninterrupted)
        print(f"{name} {saved}->{resumed}: {elementwise:.2e} {matrix:.2e}")
        assert max(elementwise, matrix) <= tolerance(name), name


@pytest.mark.parametrize("mode", MODES)
def test_skipped_steps_and_the_writer_travel_through_dcp_and_full_state_dicts(
    ranks: Ranks, tmp_path: Path, mode: str
) -> None:
    out = ranks.run(W.writer_travels, mode, str(tmp_path / "ck"))
    for rank_out in out:
        assert rank_out["dcp"] == rank_out["full"] == 1
        assert "saved by a different optimizer" in rank_out["dcp_other"]
        assert "saved by a different optimizer" in rank_out["full_other"]


@pytest.mark.parametrize("mode", MODES)
def test_a_buffer_that_cannot_be_gathered_fails_the_save_on_every_rank(
    ranks: Ranks, mode: str
) -> None:
    messages = ranks.run(W.gather_misfit, mode)
    assert all("incomplete checkpoint" in m for m in messages)
    assert any("normuon.v_row: (1, 1)" in m for m in messages)


def test_one_rank_saves_alone_after_consolidating_and_fails_fast_without() -> None:
    """HF Trainer saves ``optimizer.state_dict()`` on rank 0 only under DDP. After
    ``consolidate_state_dict()`` on every rank that dict is complete; without it rank 0 raises
    instead of waiting forever in the gather. (Own pair of ranks: a timed-out barrier leaves
    the group unusable.)"""
    pair = Ranks()
    try:
        complete, _ = pair.run(W.save_alone, True)
        single = build("normuon", W.model())
        for p in single.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        single.step()
        assert complete[0] == set(single.state_dict()["state"][0])
        assert all("normuon.v_row" in keys for i, keys in complete.items() if i < 2)
        message, _ = pair.run(W.save_alone, False)
        assert "every rank must call it" in message and "consolidate_state_dict" in message
    finally:
        pair.close(force=True)


@pytest.mark.parametrize("mode", MODES)
def test_exact_mars_is_refused_at_build(ranks: Ranks, mode: str) -> None:
    assert all("variant='exact'" in m for m in ranks.run(W.exact_mars_error, mode))


@pytest.mark.parametrize("mode", MODES)
def test_psgd_hvp_is_refused_at_build(ranks: Ranks, mode: str) -> None:
    """The Hessian-vector products need the whole graph's double backward in one process."""
    assert all("Hessian-vector products" in m for m in ranks.run(W.psgd_hvp_error, mode))


@pytest.mark.parametrize("mode", MODES)
def test_mfac_model_block_is_refused_at_build(ranks: Ranks, mode: str) -> None:
    """``blocks="model"`` needs every parameter's gradient in one step; the default
    (``"parameter"``) runs distributed (``DISTRIBUTABLE``)."""
    assert "mfac" in DISTRIBUTABLE
    for via_build, direct in ranks.run(W.mfac_model_block_errors, mode):
        assert "cannot run distributed" in via_build and "blocks='model'" in via_build
        assert "blocks='model'" in direct


@pytest.mark.parametrize("mode", MODES)
def test_induced_metric_per_tensor_runs_distributed(ranks: Ranks, mode: str) -> None:
    """The default ``scope="model"`` is refused (``SINGLE_ONLY``); ``scope="parameter"`` runs,
    equal to one process within the matrix tolerance (its norm reads the whole tensor)."""
    assert "induced_metric" in SINGLE_ONLY
    want = W.induced_metric_per_tensor(0, "single")
    for rank, got in enumerate(ranks.run(W.induced_metric_per_tensor, mode)):
        worst = max((got[n].double() - want[n].double()).abs().max().item() for n in want)
        print(f"induced_metric scope=parameter {mode} rank {rank}: {worst:.2e}")
        assert worst <= tolerance("induced_metric")


def test_state_is_rank_symmetric_where_dcp_needs_it(ranks: Ranks) -> None:
    """Every rank keeps ``step`` for every parameter; FSDP2 shards element-wise buffers on every
    rank; a matrix core's buffers (NorMuon's v_row) and DDP's whole matrix state live on their
    owner only."""
    for mode in MODES:
        keys = ranks.run(W.state_keys, mode, "normuon")
        assert keys[0].keys() == keys[1].keys()
        for name in keys[0]:
            per_rank = [set(k[name]) for k in keys]
            assert all("step" in k for k in per_rank)
            if "v_row" in str(per_rank):
                assert sum("normuon.v_row" in k for k in per_rank) == 1, (mode, name)
                if mode == "fsdp":
                    assert all("momentum.m" in k for k in per_rank)
            else:
                assert per_rank[0] == per_rank[1]


def test_estimate_gives_each_ddp_rank_its_state(ranks: Ranks) -> None:
    """``orthoptim.estimate``'s per-rank split is the distributed step's: the owner assignment
    and what each rank keeps, measured after one step on 2 ranks."""
    from orthoptim.estimate import estimate

    names = ["muon", "normuon", "shampoo", "adamw"]
    measured = ranks.run(W.state_bytes, names)
    for name in names:
        est = estimate(name, W.model(), world_size=W.WORLD)
        assert [m[name] for m in measured] == [est.rank_state_bytes(r) for r in range(W.WORLD)]


def test_unsupported_layouts_and_optimizers_raise(ranks: Ranks) -> None:
    messages = ranks.run(W.errors)[0]
    assert "2 dimensions" in messages["hsdp"]
    assert "Shard(dim=1)" in messages["shard1"]
    assert "some parameters are DTensors" in messages["partial"]
    assert "several meshes" in messages["meshes"]
    assert "cannot run distributed" in messages["single_process_only"]
    for name in SINGLE_ONLY:
        assert ranks.run(W.single_only_message, name) != ["", ""], name


@pytest.mark.parametrize("mode", MODES)
def test_a_nonfinite_shard_raises_on_every_rank(ranks: Ranks, mode: str) -> None:
    messages = ranks.run(W.nonfinite, mode)
    assert all("nothing was updated" in m for m in messages)
    assert "fc2.weight" in messages[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_scaler_finding_on_one_rank_skips_every_rank(ranks: Ranks, mode: str) -> None:
    results = ranks.run(W.scaler_found_inf, mode)
    assert results == [{"unchanged": True, "skipped": 1, "moved": True}] * 2


@pytest.mark.parametrize("mode", MODES)
def test_newton_schulz_batched_by_shape_equals_single_process(ranks: Ranks, mode: str) -> None:
    want = W.twins_batched(0, "single")
    for got in ranks.run(W.twins_batched, mode):
        for name, value in want.items():
            diff = (got[name].double() - value.double()).abs().max().item()
            assert diff <= tolerance("muon"), (mode, name, diff)


def test_bytes_sent_and_owner_column(ranks: Ranks) -> None:
    # DDP, muon on Tiny: LPT puts fc1 (13x8) on rank 0, fc2 (7x13) on rank 1 (gate, 1x7, has
    # one dimension larger than 1: a vector, on the AdamW route). One all-gather round (one
    # shape bucket of each owner) pads to fc1's 104 values (fc2 has 91).
    assert ranks.run(W.sent_bytes, "ddp") == [104 * 4, 104 * 4]
    # FSDP2: rank 0 sends its shards of fc2 (4 rows of 13) to rank 1 and rank 1's 6 rows of
    # fc1 (x8) back: 52 + 48 floats; rank 1 the mirror image.
    assert ranks.run(W.sent_bytes, "fsdp") == [100 * 4, 100 * 4]
    table = ranks.run(W.describe)[0]
    assert table.splitlines()[0].split()[-1] == "owner"
    assert {line.split()[-1] for line in table.splitlines()[2:]} == {"0", "1", "all"}


@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_replicated_state_option(ranks: Ranks, name: str) -> None:
    """``replicate_state=True``: the momentum of every matrix on every rank (computed there),
    only the matrix core's own buffers (NorMuon's v_row) on the owner; same result."""
    out = ranks.run(W.replicated_state, name)
    want = W.reference(name, torch.float32)
    for params, _ in out:
        elementwise, matrix = compare(name, params, want)
        assert elementwise == 0.0
        assert matrix <= tolerance(name)
    keys = [k for _, k in out]
    for pname in W.matrix_names(name):
        pname = f"module.{pname}"
        assert all("momentum.m" in k[pname] for k in keys)
        assert sum("normuon.v_row" in k[pname] for k in keys) == (name == "normuon")
