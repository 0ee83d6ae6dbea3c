"""The node-level frozen-prefix cache: same training as the full forward pass, one entry per (prefix,
split) shared by every images-per-label subset and seed, augmentation falls back, corrupt entries are
recomputed, and two processes racing on one key compute it once."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tunetl.placement as placement_module
from tunetl.config import ExperimentConfig, ResourcesConfig, load_experiment
from tunetl.data import DatasetSpec, StreamingImageSet, load_dataset
from tunetl.feature_cache import CACHE_DIR_ENV, FeatureCache
from tunetl.models import build
from tunetl.params import TrialParams
from tunetl.trial import TrialRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def experiment() -> ExperimentConfig:
    return load_experiment(ROOT / "experiments" / "quickstart.yaml", overrides=["training.epochs=4"])


def source_weights(seed: int) -> dict[str, torch.Tensor]:
    """A "source" smallcnn for digits' one channel: random weights are enough to share a prefix."""
    return build("smallcnn", num_classes=5, in_channels=1, seed=seed).state_dict()


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return source_weights(123)


def entries(directory: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in directory.glob("*.arrow")}


def test_node_cache_trains_like_the_full_forward_pass(
    experiment: ExperimentConfig, source: dict, tmp_path: Path
) -> None:
    params = TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=10)
    node = TrialRunner(params, experiment, seed=3, source_state=source, feature_cache="node", feature_cache_dir=tmp_path)
    off = TrialRunner(params, experiment, seed=3, source_state=source, feature_cache="off", feature_cache_dir=tmp_path)
    assert node.feature_source == {"train": "node-computed", "val": "node-computed"}
    assert (node.train_start, node.val_start) == (2, 2) and (off.train_start, off.val_start) == (0, 0)
    cached = [node.run_epoch() for _ in range(4)]
    full = [off.run_epoch() for _ in range(4)]
    # Bit-equal on this CPU. The prefix runs in other batch groupings (the whole split in eval batches vs
    # training batches), and a convolution library may pick another algorithm per batch size, so losses
    # are allowed last-bit differences; accuracies count whole predictions and must match.
    assert [m.val_acc for m in cached] == [m.val_acc for m in full]
    assert [m.train_acc for m in cached] == [m.train_acc for m in full]
    assert [m.train_loss for m in cached] == pytest.approx([m.train_loss for m in full], rel=1e-6)
    assert [m.val_loss for m in cached] == pytest.approx([m.val_loss for m in full], rel=1e-6)
    # A trial reading the entry another trial wrote trains bit for bit like the one that computed it.
    hit = TrialRunner(params, experiment, seed=3, source_state=source, feature_cache="node", feature_cache_dir=tmp_path)
    assert hit.feature_source == {"train": "node-hit", "val": "node-hit"}
    assert [hit.run_epoch().as_dict() | {"seconds": 0} for _ in range(4)] == [
        m.as_dict() | {"seconds": 0} for m in cached
    ]


def test_augmenting_trials_run_the_whole_network_on_training_batches(
    experiment: ExperimentConfig, source: dict, tmp_path: Path
) -> None:
    params = TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=10, augment=True)
    node = TrialRunner(params, experiment, seed=0, source_state=source, feature_cache="node", feature_cache_dir=tmp_path)
    off = TrialRunner(params, experiment, seed=0, source_state=source, feature_cache="off", feature_cache_dir=tmp_path)
    assert node.train_start == 0 and node.feature_source["train"] == "preprocessed"
    # Validation images are never augmented, so the validation split still shares its prefix outputs.
    assert node.val_start == 2 and set(node.feature_keys) == {"val"}
    assert list(entries(tmp_path)) == [f"{node.feature_keys['val']}.arrow"]
    a = [node.run_epoch() for _ in range(3)]
    b = [off.run_epoch() for _ in range(3)]
    # It trains (the loss falls; accuracy after 3 epochs from random weights is still near chance).
    assert all(math.isfinite(m.train_loss) for m in a) and a[-1].train_loss < a[0].train_loss
    assert [m.val_acc for m in a] == [m.val_acc for m in b]


def test_subsets_and_seeds_share_one_entry_per_split(
    experiment: ExperimentConfig, source: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = TrialRunner(TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=5), experiment, seed=0,
                        source_state=source, feature_cache="node", feature_cache_dir=tmp_path)
    assert first.feature_source == {"train": "node-computed", "val": "node-computed"}
    written = entries(tmp_path)
    assert len(written) == 2
    # Another subset size, seed and transfer depth (the suffix differs, the prefix does not); the cache
    # folder reaches it through the environment, as it reaches Ray workers.
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    second = TrialRunner(TrialParams(transfer_depth=2, frozen_depth=2, images_per_label=20), experiment, seed=1,
                         source_state=source, feature_cache="node")
    assert second.feature_source == {"train": "node-hit", "val": "node-hit"}
    assert second.feature_keys == first.feature_keys
    after = entries(tmp_path)
    assert {k: v.st_ino for k, v in after.items()} == {k: v.st_ino for k, v in written.items()}
    assert second.num_train == 100 and first.num_train == 25
    assert second.run_epoch().val_acc > 0.2


def test_the_key_follows_the_prefix_weights(experiment: ExperimentConfig, source: dict, tmp_path: Path) -> None:
    def keys(params: TrialParams, seed: int, state: dict | None) -> dict[str, str]:
        runner = TrialRunner(params, experiment, seed=seed, source_state=state, feature_cache="node",
                             feature_cache_dir=tmp_path)
        return runner.feature_keys

    frozen2 = TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=5)
    base = keys(frozen2, 0, source)
    assert keys(frozen2, 0, source_weights(7))["train"] != base["train"]
    assert keys(TrialParams(transfer_depth=4, frozen_depth=1, images_per_label=5), 0, source)["train"] != base["train"]
    # Stages frozen by a zero multiplier keep their seeded random initialisation: the seed changes the
    # weights and so the key, while subsets of one seed still share.
    random = TrialParams(transfer_depth=0, stage_multipliers=(0, 0, 1, 1), images_per_label=5)
    seed0, seed1 = keys(random, 0, None), keys(random, 1, None)
    assert seed0["train"] != seed1["train"]
    assert keys(random.model_copy(update={"images_per_label": 10}), 0, None) == seed0


def test_unreadable_entries_are_recomputed(experiment: ExperimentConfig, source: dict, tmp_path: Path) -> None:
    params = TrialParams(transfer_depth=4, frozen_depth=3, images_per_label=5)
    first = TrialRunner(params, experiment, seed=0, source_state=source, feature_cache="node", feature_cache_dir=tmp_path)
    reference = [first.run_epoch().val_acc for _ in range(2)]
    train_file = tmp_path / f"{first.feature_keys['train']}.arrow"
    val_file = tmp_path / f"{first.feature_keys['val']}.arrow"
    with open(train_file, "r+b") as f:
        f.truncate(train_file.stat().st_size // 2)
    val_file.write_bytes(b"not an arrow file")
    again = TrialRunner(params, experiment, seed=0, source_state=source, feature_cache="node", feature_cache_dir=tmp_path)
    assert again.feature_source == {"train": "node-computed", "val": "node-computed"}
    assert [again.run_epoch().val_acc for _ in range(2)] == reference
    cache = FeatureCache(tmp_path)
    assert cache.read(first.feature_keys["train"]) is not None and cache.read(first.feature_keys["val"]) is not None


def test_an_unwritable_cache_folder_only_costs_the_sharing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = FeatureCache(blocker / "cache")
    found = cache.get_or_compute("k", lambda: torch.ones(3, 2))
    assert found.computed and found.path is None and torch.equal(found.features, torch.ones(3, 2))


def _slow_features(marker_dir: str) -> torch.Tensor:
    Path(marker_dir, f"computed-{os.getpid()}").write_text("")
    time.sleep(1.0)  # long enough for the other process to reach the lock while this one holds it
    return torch.arange(4000, dtype=torch.float32).reshape(100, 4, 10)


def _race(cache_dir: str, marker_dir: str, barrier: object) -> None:
    from functools import partial

    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    found = FeatureCache(cache_dir).get_or_compute("shared-key", partial(_slow_features, marker_dir))
    Path(marker_dir, f"result-{os.getpid()}").write_text(f"{float(found.features.sum())} {found.computed}")


@pytest.mark.slow
def test_two_processes_compute_one_key_once(tmp_path: Path) -> None:
    cache_dir, markers = tmp_path / "cache", tmp_path / "markers"
    markers.mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race, args=(str(cache_dir), str(markers), barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 9)
                p.join()
    assert len(list(markers.glob("computed-*"))) == 1
    results = sorted(p.read_text() for p in markers.glob("result-*"))
    expected = float(torch.arange(4000, dtype=torch.float32).sum())
    assert results == sorted([f"{expected} True", f"{expected} False"])
    assert [p.name for p in cache_dir.iterdir() if p.suffix != ".lock"] == ["shared-key.arrow"]
    read = FeatureCache(cache_dir).read("shared-key")
    assert read is not None and torch.equal(read, torch.arange(4000, dtype=torch.float32).reshape(100, 4, 10))


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits 0-2 as 8x8 PNG files, 30 per class: a folder dataset that can be streamed."""
    from PIL import Image

    from tunetl.data import BUILTINS

    raw = BUILTINS["digits"]()
    root = tmp_path_factory.mktemp("digit-folder")
    for label in range(3):
        (root / str(label)).mkdir()
        for i, pos in enumerate(np.flatnonzero(raw.labels == label)[:30]):
            Image.fromarray(raw.images[pos, 0]).save(root / str(label) / f"{i:02d}.png")
    return root


@pytest.mark.slow
def test_streamed_folders_use_loader_workers_and_the_node_cache(
    experiment: ExperimentConfig, source: dict, digit_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DatasetSpec(path=str(digit_folder))
    exp = experiment.model_copy(update={"dataset": spec, "resources": ResourcesConfig(cpu=2)})
    params = TrialParams(transfer_depth=4, frozen_depth=2, images_per_label=15)

    def history(runner: TrialRunner) -> list[float]:
        return [runner.run_epoch().val_acc for _ in range(3)]

    memory = TrialRunner(params, exp, source_state=source, task=load_dataset(spec), feature_cache="off")
    reference = history(memory)
    streamed = load_dataset(spec, memory_limit_bytes=0)
    assert isinstance(streamed.train, StreamingImageSet) and streamed.train.num_workers == 0
    # The prefix outputs of a streamed folder are computed through the trial's loader and shared.
    node = TrialRunner(params, exp, source_state=source, task=streamed, feature_cache="node", feature_cache_dir=tmp_path)
    assert node.feature_source == {"train": "node-computed", "val": "node-computed"}
    assert history(node) == reference
    # Nothing fits in memory: every epoch streams files through one kept loader with a worker process.
    monkeypatch.setattr(placement_module, "RESIDENT_BYTES", 0)
    stream = TrialRunner(params, exp, source_state=source, task=streamed, feature_cache="node", feature_cache_dir=tmp_path)
    assert stream.feature_source == {"train": "streamed", "val": "streamed"}
    train_set = stream._train_set
    assert isinstance(train_set, StreamingImageSet) and train_set is not streamed.train
    assert train_set.num_workers == 1 and not train_set.pin_memory
    assert history(stream) == reference
    assert list(train_set._loaders) == [exp.training.batch_size]
