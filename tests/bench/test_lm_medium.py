"""``lm_medium``: the stdlib-docstring corpus, its by-file split, the model size, a smoke run.

The corpus is built once per process (``functools.lru_cache``; about 3 s on 2 CPU cores), so the
tests share it; everything else runs the quick configuration.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import orthoptim
from orthoptim.bench.arena import tasks
from orthoptim.bench.arena.tasks.lm import _stdlib, corpus, stdlib_docstrings
from orthoptim.routing import classify


def _documents() -> dict[str, str]:
    from pydoc_data import topics

    return {
        **stdlib_docstrings(),
        **{f"pydoc_data/topics.py:{k}": v for k, v in topics.topics.items()},
    }


def test_stdlib_corpus_loads_from_the_installed_python() -> None:
    docs = stdlib_docstrings()
    assert len(docs) > 100 and sum(map(len, docs.values())) > 500_000
    assert "argparse.py" in docs and "Command-line parsing library" in docs["argparse.py"]
    assert not any(k.startswith(("test/", "idlelib/")) or "/tests/" in k for k in docs)
    c = corpus(name="stdlib")
    assert len(c.train) + len(c.val) > 1_000_000
    assert c.source.startswith("CPython") and "docstrings" in c.source and len(c.sha256) == 16


def test_split_is_by_file_disjoint_and_about_a_tenth() -> None:
    c = corpus(name="stdlib")
    docs = _documents()
    assert set(c.train_docs).isdisjoint(c.val_docs)
    assert set(c.train_docs) | set(c.val_docs) == set(docs)
    assert any(not k.startswith("pydoc_data/") for k in c.val_docs)
    assert 0.08 < len(c.val) / (len(c.train) + len(c.val)) < 0.15
    train_text = bytes(c.train.tolist()).decode()
    val_text = bytes(c.val.tolist()).decode()
    # Short documents (a one-line codec docstring) may recur verbatim in other files; a long one
    # found in training would mean the split leaked.
    for name in c.val_docs:
        assert docs[name] in val_text
        if len(docs[name]) > 300:
            assert docs[name] not in train_text, name


def test_split_is_deterministic() -> None:
    # A second walk and parse of the stdlib, bypassing the cache, must give the same documents
    # in the same order; the split of them must give the same bytes.
    fresh = stdlib_docstrings.__wrapped__()
    assert list(fresh.items()) == list(stdlib_docstrings().items())
    a, b = corpus(name="stdlib"), _stdlib(0.1)
    assert a.sha256 == b.sha256 and a.val_docs == b.val_docs
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)


def test_model_is_a_few_million_parameters_mostly_hidden_matrices() -> None:
    task = tasks.make("lm_medium")
    model = task.model(0)
    roles = classify(model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    hidden = sum(params[k].numel() for k, role in roles.items() if role == "hidden")
    assert 2_000_000 <= total <= 5_000_000
    assert hidden / total > 0.8
    assert task.parameter_counts() == (total, hidden)
    assert f"{total:,} parameters" in task.describe()["model"]


def test_registered_as_the_final_not_in_the_default_race() -> None:
    assert tasks.FINAL == ("lm_medium",)
    assert "lm_medium" not in tasks.TASKS and "lm_medium" in tasks.REAL
    default, quick = tasks.make("lm_medium"), tasks.make("lm_medium", quick=True)
    assert default.corpus == quick.corpus == "stdlib"
    assert quick.steps < default.steps and default.steps % default.eval_every == 0
    described = default.describe()
    assert described["name"] == "lm_medium" and described["val_bytes"] > 100_000


def test_quick_task_trains_a_few_adamw_steps() -> None:
    task = tasks.make("lm_medium", quick=True)
    model = task.model(0)
    opt = orthoptim.build("adamw", model, lr=3e-3)
    batches = task.batches(0)
    losses = []
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, next(batches))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    metrics = task.evaluate(model)
    assert math.isfinite(metrics["val_loss"]) and metrics["val_loss"] < math.log(256)


def test_reads_a_user_text_file(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 40)
    task = tasks.make("lm_medium", quick=True, data=str(path))
    assert "user text file" in task.describe()["source"]
    assert math.isfinite(task.evaluate(task.model(0))["val_loss"])
    with pytest.raises(ValueError, match="unknown corpus"):
        dataclasses.replace(task, data=None, corpus="wikipedia").describe()  # type: ignore[arg-type]
