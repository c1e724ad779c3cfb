"""Task data on small slices: real data with a fixed held-out split, seeded batches, metrics."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from orthoptim.bench.arena import tasks
from orthoptim.bench.arena.tasks.base import Target, shuffled_batches
from orthoptim.bench.arena.tasks.lm import corpus


def test_target_reached_in_both_directions() -> None:
    low, high = Target("loss", 1.0, "min"), Target("acc", 0.9, "max")
    assert low.reached({"loss": 1.0}) and not low.reached({"loss": 1.01})
    assert high.reached({"acc": 0.95}) and not high.reached({"acc": 0.5})
    assert not low.reached({"loss": math.nan}) and not low.reached({"other": 0.0})
    with pytest.raises(ValueError, match="mode"):
        Target("loss", 1.0, "lowest")  # type: ignore[arg-type]


def test_shuffled_batches_cover_each_epoch_once_and_depend_on_the_seed() -> None:
    it = shuffled_batches(10, 3, seed=0)
    epoch = torch.cat([next(it) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9
    again = shuffled_batches(10, 3, seed=0)
    assert torch.equal(next(again), epoch[:3])
    assert not torch.equal(next(shuffled_batches(10, 3, seed=1)), epoch[:3])
    with pytest.raises(ValueError, match="exceeds"):
        next(shuffled_batches(2, 3, seed=0))


def test_pydoc_corpus_is_held_out_by_topic() -> None:
    from pydoc_data import topics

    c = corpus()
    total = len(c.train) + len(c.val)
    assert 0.08 < len(c.val) / total < 0.3
    val_text = bytes(c.val.tolist()).decode()
    held = [name for name, text in topics.topics.items() if text in val_text]
    assert held, "validation text should be whole topics"
    train_text = bytes(c.train.tolist()).decode()
    assert all(topics.topics[name] not in train_text for name in held)
    assert "pydoc_data/topics.py" in c.source and len(c.sha256) == 16


def test_lm_batches_are_next_byte_pairs_and_seeded() -> None:
    task = tasks.make("lm", quick=True)
    x, y = next(task.batches(0))
    assert x.shape == y.shape == (task.batch_size, task.context)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(next(task.batches(0))[0], x)
    assert not torch.equal(next(task.batches(1))[0], x)
    metrics = task.evaluate(task.model(0))
    assert metrics["val_loss"] == pytest.approx(math.log(256), rel=0.1)  # untrained ~ uniform
    assert metrics["val_bpb"] == pytest.approx(metrics["val_loss"] / math.log(2))
    described = task.describe()
    assert described["source"].startswith("CPython") and described["target"]["metric"] == "val_loss"


def test_lm_reads_a_user_text_file(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 40)
    task = tasks.make("lm", quick=True, data=str(path))
    assert task.data == str(path)
    assert "user text file" in task.describe()["source"]
    assert task.describe()["val_bytes"] == len(path.read_bytes()) - int(0.9 * 1800)
    assert math.isfinite(task.evaluate(task.model(0))["val_loss"])
    with pytest.raises(ValueError, match="text file"):
        dataclasses.replace(task, data=str(tmp_path / "missing.txt")).describe()


def test_digits_split_is_stratified_and_fixed() -> None:
    pytest.importorskip("sklearn")
    task = tasks.make("digits", quick=True)
    d = task._images()
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_train) + len(d.y_val) == 1797
    counts = torch.bincount(d.y_val, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40  # 20% of ~180 per class
    assert abs(d.x_train.mean().item()) < 1e-5 and d.x_train.std().item() == pytest.approx(1, 1e-4)
    assert torch.equal(tasks.make("digits")._images().y_val, d.y_val)
    x, y = next(task.batches(0))
    assert x.shape == (task.batch_size, 1, 8, 8) and y.shape == (task.batch_size,)
    metrics = task.evaluate(task.model(0))
    assert 0 <= metrics["val_acc"] <= 1 and metrics["val_loss"] > 0
    assert "scikit-learn" in task.describe()["source"]


def test_digits_reads_a_user_image_folder(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    g = torch.Generator().manual_seed(0)
    for label, bright in (("dark", 0.2), ("light", 0.8)):
        (tmp_path / label).mkdir()
        for i in range(10):
            img = (bright + 0.1 * torch.rand(16, 12, generator=g)).clamp(0, 1).numpy()
            matplotlib.image.imsave(tmp_path / label / f"{i}.png", img, cmap="gray")
    task = tasks.make("digits", quick=True, data=str(tmp_path))
    d = task._images()
    assert d.classes == ("dark", "light") and len(d.y_train) + len(d.y_val) == 20
    assert d.x_val.shape[1:] == (1, 8, 8)
    assert task.model(0).classifier.out_features == 2
    with pytest.raises(ValueError, match="sub-folder"):
        dataclasses.replace(task, data=str(tmp_path / "dark")).describe()


def test_quadratic_metric_is_zero_at_the_optimum_and_one_at_zero() -> None:
    from orthoptim.bench.arena.tasks.synthetic import _quadratic_instance

    task = tasks.make("quadratic", quick=True)
    model = task.model(0)
    _, w_star = _quadratic_instance(task.dim, task.cond)
    with torch.no_grad():
        model.weight.copy_(w_star)
    assert task.evaluate(model)["rel_loss"] == pytest.approx(0, abs=1e-10)
    with torch.no_grad():
        model.weight.zero_()
    assert task.evaluate(model)["rel_loss"] == pytest.approx(1)
    assert task.loss(model, next(task.batches(0))).item() > 0


def test_matrix_sensing_metric_and_loss_vanish_at_the_truth() -> None:
    task = tasks.make("matrix_sensing", quick=True)
    m_star = task._instance()[0]
    model = task.model(0)
    assert task.evaluate(model)["rel_error"] == pytest.approx(1, abs=0.05)  # small init
    u, s, vh = torch.linalg.svd(m_star)
    r = 2 * task.rank
    with torch.no_grad():
        model.u.copy_(u[:, :r] * s[:r])
        model.v.copy_(vh[:r].T)
    metrics = task.evaluate(model)
    assert metrics["rel_error"] < 1e-5 and metrics["val_loss"] < 1e-10
    assert task.loss(model, next(task.batches(0))).item() < 1e-10


def test_make_validates_names_data_and_steps(tmp_path: Path) -> None:
    assert set(tasks.TASKS) == {"lm", "digits", "quadratic", "matrix_sensing"}
    assert tasks.make("quadratic", steps=7).steps == 7
    with pytest.raises(KeyError, match="known"):
        tasks.make("mnist")
    with pytest.raises(ValueError, match="--data"):
        tasks.make("quadratic", data=str(tmp_path))
    with pytest.raises(ValueError, match="steps"):
        tasks.make("lm", steps=0)
    for name in tasks.TASKS:
        default, quick = tasks.make(name), tasks.make(name, quick=True)
        assert quick.steps < default.steps
        assert default.steps % default.eval_every == 0
