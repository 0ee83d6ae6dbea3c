"""The held-out test split, the delivered classifier (best epoch's weights, raw images in) and the alias
rule, without Ray or an MLflow server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunetl.classifier import ClassifierSpec, ImageClassifier, to_model_input, top_k
from tunetl.config import ConfigError, load_experiment
from tunetl.data import DataError, DatasetSpec, load_dataset, stratified_split
from tunetl.params import TrialParams
from tunetl.search.trainable import decision_epochs
from tunetl.tracking.image_model import beats, png_bytes
from tunetl.trial import TrialRunner
from tunetl.winner import accuracy, delivered_classifier

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"builtin": "digits", "classes": [5, 6, 7, 8, 9]}


def _keys(images) -> set[bytes]:
    return {img.numpy().tobytes() for x, _ in images.batches(batch_size=512) for img in x}


def test_test_split_is_disjoint_stratified_and_seeded() -> None:
    task = load_dataset(DatasetSpec(**DIGITS, test_fraction=0.2))
    assert task.test is not None
    test, train, val = _keys(task.test), _keys(task.train), _keys(task.val)
    assert not test & train and not test & val
    counts = np.bincount(task.test.labels)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class (~180 images)
    again = load_dataset(DatasetSpec(**DIGITS, test_fraction=0.2))
    assert _keys(again.test) == test
    other = load_dataset(DatasetSpec(**DIGITS, test_fraction=0.2, split_seed=1))
    assert _keys(other.test) != test


def test_no_test_fraction_keeps_the_earlier_split() -> None:
    task = load_dataset(DatasetSpec(**DIGITS))
    assert task.test is None
    from tunetl.data import BUILTINS
    from tunetl.data.subsets import remap_labels

    raw = BUILTINS["digits"]()
    keep, labels = remap_labels(raw.labels, [5, 6, 7, 8, 9])
    _, val = stratified_split(labels, 0.3, 0, [5, 6, 7, 8, 9], ["5", "6", "7", "8", "9"])
    assert _keys(task.val) == {img.tobytes() for img in raw.images[keep][val]}
    assert task.without_test() == task


@pytest.mark.parametrize(
    ("fields", "needle"),
    [({"test_fraction": 0.8}, r"val_fraction \+ test_fraction must be < 1"),
     ({"test_path": "/x", "test_fraction": 0}, "test_path is for folder datasets")],
)
def test_bad_test_settings_name_the_key(fields: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_experiment(ROOT / "experiments" / "quickstart.yaml",
                        overrides=[f"dataset.{k}={v}" for k, v in fields.items()])


def _folder(root: Path, classes: str, per_class: int, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(len(classes) + per_class)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_test_path_is_loaded_at_the_training_shape(tmp_path: Path) -> None:
    train = _folder(tmp_path / "train", "ab", 4, (10, 12))
    test = _folder(tmp_path / "test", "ab", 3, (20, 7))
    task = load_dataset(DatasetSpec(path=str(train), test_path=str(test)))
    assert task.test is not None and len(task.test) == 6
    x, _ = next(iter(task.test.batches(batch_size=6)))
    assert tuple(x.shape) == (6, 1, 10, 12)
    _folder(tmp_path / "partial", "a", 2, (10, 12))
    with pytest.raises(DataError, match="no class folder"):
        load_dataset(DatasetSpec(path=str(train), test_path=str(tmp_path / "partial")))


def test_delivered_weights_are_the_best_epochs() -> None:
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml",
                          overrides=["training.epochs=6", "training.base_lr=0.05"])
    task = load_dataset(exp.dataset)
    params = TrialParams(transfer_depth=0, frozen_depth=0, images_per_label=20)
    runner = TrialRunner(params, exp, seed=0, task=task, source_state=None)
    for _ in range(6):
        runner.run_epoch()
    state = runner.state_dict()
    assert 1 <= state["best_epoch"] <= 6 and state["best_model"] is not None
    clf = delivered_classifier(exp, task, params, state)
    assert clf is not None
    assert accuracy(clf, task.val) == pytest.approx(runner.best_val_acc, abs=1e-9)


def test_raw_image_forms_give_the_same_input() -> None:
    spec = ClassifierSpec("smallcnn", ["a", "b", "c"], 3, (6, 5), 3, None)
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    want = to_model_input(hwc, spec)
    assert want.shape == (3, 6, 5)
    assert (to_model_input(chw, spec) == want).all()
    assert (to_model_input(png_bytes(chw), spec) == want).all()
    big = to_model_input(np.zeros((40, 30), dtype=np.uint8), spec)  # other sizes and channels are converted
    assert big.shape == (3, 6, 5)
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(hwc.astype(np.float32), spec)


def test_classifier_round_trips_through_its_folder(tmp_path: Path) -> None:
    spec = ClassifierSpec("smallcnn", ["a", "b", "c"], 1, (8, 8), 1, None)
    clf = ImageClassifier(spec)
    images = [np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8) for i in range(4)]
    back = ImageClassifier.load(clf.save(tmp_path / "m"))
    np.testing.assert_array_equal(back.predict(images), clf.predict(images))
    probs = clf.predict(images)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    ranked = top_k(np.array([[0.2, 0.5, 0.3]]), spec.class_names, 2)
    assert ranked == [[("b", 0.5), ("c", 0.3)]]


def test_alias_moves_only_to_a_better_version() -> None:
    assert beats({"tunetl.test_acc": "0.9"}, {"tunetl.test_acc": "0.8"})[0]
    assert not beats({"tunetl.test_acc": "0.8"}, {"tunetl.test_acc": "0.8"})[0]
    assert not beats({"tunetl.score": "0.7"}, {"tunetl.score": "0.9", "tunetl.test_acc": "0.5"})[0]
    assert beats({"tunetl.score": "0.7"}, {})[0]


def test_checkpoints_land_where_asha_decides() -> None:
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml",
                          overrides=["scheduler.type=asha", "scheduler.grace_period=10", "scheduler.reduction_factor=2",
                                      "training.epochs=20"])
    assert decision_epochs(exp) == {10, 20}
    three = exp.model_copy(update={"scheduler": exp.scheduler.model_copy(
        update={"grace_period": 2, "reduction_factor": 3})})
    assert decision_epochs(three) == {2, 6, 18}
    assert decision_epochs(exp.model_copy(update={"scheduler": exp.scheduler.model_copy(
        update={"type": "none"})})) == set()


def test_refit_trains_on_train_and_val() -> None:
    from tunetl.winner import refit, train_and_val

    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml", overrides=["training.base_lr=0.05"])
    task = load_dataset(exp.dataset)
    params = TrialParams(transfer_depth=0, frozen_depth=0, images_per_label="all")
    merged = train_and_val(task)
    assert len(merged.train) == len(task.train) + len(task.val)
    assert np.array_equal(merged.train.labels, np.concatenate([task.train.labels, task.val.labels]))
    assert torch.equal(merged.train.images[len(task.train):], task.val.images)
    clf = refit(exp, task, params, seed=0, epochs=3, source_state=None)
    assert clf.spec.class_names == task.class_names
    assert accuracy(clf, task.val) > 0.5
