"""write_report on hand-made trials frames: the right files, real (non-blank) PNGs, the expected
numbers in the tables, and byte-identical output on a second run."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tunetl.report import OUTPUT_FILES, PLOTS, write_report

_GRADUATED = (0.0, 1.0, 2.0, 4.0)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Trials-frame rows with the run columns load_trials adds; FINISHED unless a row says so."""
    full = [
        {
            "run_id": f"run{i:04d}",
            "status": "FINISHED",
            "stopped_early": False,
            "dataset": "digits[5,6,7,8,9]",
            "source": "digits[0,1,2,3,4]",
            "backbone": "smallcnn",
            "epochs_run": 10,
            **r,
        }
        for i, r in enumerate(rows)
    ]
    frame = pd.DataFrame(full)
    frame["val_acc"] = frame["best_val_acc"] - 0.01
    return frame


# Soekhoe-style: 2 sizes x 4 conditions x 2 seeds. Seed means (%) / std:
#   size 5:  base 81.0 ± 1.4, FTall 83.0 ± 1.4, S1T 90.0 ± 2.8, S2T 86.0 ± 0.0
#   size 50: base 95.0 ± 1.4, FTall 97.0 ± 1.4, S1T 96.0 ± 0.0, S2T 93.0 ± 1.4
_CONDITIONS = {
    "base": (0, 0),
    "FTall": (3, 0),
    "S1T": (1, 1),
    "S2T": (2, 2),
}
_ACC = {
    (5, "base"): (0.80, 0.82),
    (5, "FTall"): (0.82, 0.84),
    (5, "S1T"): (0.88, 0.92),
    (5, "S2T"): (0.86, 0.86),
    (50, "base"): (0.94, 0.96),
    (50, "FTall"): (0.96, 0.98),
    (50, "S1T"): (0.96, 0.96),
    (50, "S2T"): (0.92, 0.94),
}


@pytest.fixture(scope="module")
def frozen_frame() -> pd.DataFrame:
    rows = []
    for (size, name), accs in _ACC.items():
        td, fd = _CONDITIONS[name]
        for seed, acc in enumerate(accs):
            rows.append(
                {
                    "condition": name,
                    "transfer_depth": td,
                    "frozen_depth": fd,
                    "images_per_label": size,
                    "base_lr": 0.01,
                    "seed": seed,
                    "best_val_acc": acc,
                }
            )
    rows.append({**rows[0], "status": "FAILED", "best_val_acc": float("nan")})
    return _frame(rows)


def _il_acc(size: int, ll: float, il: float) -> float:
    """Size 10 is best with IL 0 at both LL; size 50 with IL 1e-3 (LL 0.01) and 1e-2 (LL 0.1)."""
    table = {
        (10, 0.01): {0.0: 0.70, 1e-3: 0.65, 1e-2: 0.50},
        (10, 0.1): {0.0: 0.75, 1e-3: 0.72, 1e-2: 0.60},
        (50, 0.01): {0.0: 0.80, 1e-3: 0.90, 1e-2: 0.85},
        (50, 0.1): {0.0: 0.82, 1e-3: 0.86, 1e-2: 0.92},
    }
    return table[(size, ll)][il]


@pytest.fixture(scope="module")
def il_frame() -> pd.DataFrame:
    rows = [
        {
            "images_per_label": size,
            "inner_lr": il,
            "last_lr": ll,
            "seed": seed,
            "best_val_acc": _il_acc(size, ll, il) + (0.01 if seed else -0.01),
        }
        for size in (10, 50)
        for ll in (0.01, 0.1)
        for il in (0.0, 1e-3, 1e-2)
        for seed in (0, 1)
    ]
    return _frame(rows)


# Dube §4.3: scales 0.25..4 for two sizes; size 10 is best at 0.5, size 50 at 2. Oracle (85+95)/2
# = 90.0; each scale is best once, the tie goes to the higher mean: 0.5 -> (85+90)/2 = 87.5 beats
# 2 -> (70+95)/2 = 82.5; baseline lr_scale 1 -> 85.0, so the fixed scale keeps half the gain.
_SCALE_ACC = {
    10: {0.25: 0.80, 0.5: 0.85, 1.0: 0.78, 2.0: 0.70, 4.0: 0.60},
    50: {0.25: 0.88, 0.5: 0.90, 1.0: 0.92, 2.0: 0.95, 4.0: 0.91},
}


@pytest.fixture(scope="module")
def scale_frame() -> pd.DataFrame:
    rows = [
        {
            "images_per_label": size,
            "inner_lr": 0.01,
            "last_lr": 0.16,
            "stage_multipliers": _GRADUATED,
            "lr_scale": scale,
            "seed": 0,
            "best_val_acc": acc,
        }
        for size, accs in _SCALE_ACC.items()
        for scale, acc in accs.items()
    ]
    return _frame(rows)


def _png_ok(path: Path) -> None:
    """A real PNG of figure size whose data were drawn: many coloured (not grey) pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 700 and image.height >= 450, image.size
        rgb = np.asarray(image.convert("RGB"), dtype=float)
    assert rgb.std() > 10.0, f"{path.name} looks blank"
    colourful = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    assert colourful.sum() > 500, f"{path.name} has no coloured data marks"


def _table_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def frozen_report(frozen_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(frozen_frame, tmp_path_factory.mktemp("frozen"), "Frozen depth on digits")


@pytest.fixture(scope="module")
def il_report(il_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(il_frame, tmp_path_factory.mktemp("il"), "IL/LL grid")


@pytest.fixture(scope="module")
def scale_report(scale_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(scale_frame, tmp_path_factory.mktemp("scale"), "Scale sweep")


def test_frozen_depth_report_files_and_numbers(frozen_report: Path) -> None:
    out = frozen_report.parent
    assert frozen_report.name == "index.md"
    _png_ok(out / PLOTS["conditions"])
    for name in ("inner_lr", "alpha", "scale", "curves"):
        assert not (out / PLOTS[name]).exists(), name
    md = _table_text(out / "conditions.md")
    assert re.search(r"\| 5 \| 81\.0 ± 1\.4 \| 83\.0 ± 1\.4 \| 90\.0 ± 2\.8 \| 86\.0 ± 0\.0 \|", md)
    assert re.search(
        r"\| 50 \| 95\.0 ± 1\.4 \| 97\.0 ± 1\.4 \| 96\.0 ± 0\.0 \| 93\.0 ± 1\.4 \|", md
    )
    csv = pd.read_csv(out / "conditions.csv")
    assert list(csv.columns) == ["images_per_label", "base", "FTall", "S1T", "S2T"]
    assert csv.loc[csv["images_per_label"] == 5, "S1T"].item() == pytest.approx(90.0)
    freeze = _table_text(out / "freeze_heuristic.md")
    assert (
        "Rule: freeze the first stage up to 5 images per label; above that fine-tune all." in freeze
    )
    top = pd.read_csv(out / "top_trials.csv")
    assert len(top) == 10
    assert top["best_val_acc_pct"].iloc[0] == pytest.approx(98.0)
    assert top["run_id"].iloc[0] == "run0011"
    index = _table_text(frozen_report)
    assert f"![Accuracy by condition]({PLOTS['conditions']})" in index
    assert "17 trials (1 failed, 16 finished" in index
    assert "at 5 images per label the best is S1T (90.0%)." in index


def test_il_ll_report_plots_and_alpha(il_report: Path) -> None:
    out = il_report.parent
    _png_ok(out / PLOTS["inner_lr"])
    _png_ok(out / PLOTS["alpha"])
    assert not (out / PLOTS["conditions"]).exists()
    assert not (out / PLOTS["scale"]).exists()
    ab = pd.read_csv(out / "alpha_beta.csv")
    alphas = {(r.images_per_label, r.last_lr): r.alpha for r in ab.itertuples()}
    assert alphas == {(10, 0.01): 0.0, (10, 0.1): 0.0, (50, 0.01): 1e-3, (50, 0.1): 1e-2}
    row = ab[(ab["images_per_label"] == 10) & (ab["last_lr"] == 0.01)].iloc[0]
    assert row["max_acc_pct"] == pytest.approx(70.0)
    assert row["beta_pct"] == pytest.approx(40.0)
    md = _table_text(out / "alpha_beta.md")
    assert "| 10 | 0.01 | 0 | 70.0 | 50.0 | 40.0 | 3 |" in md
    assert "IL = 0.01, LL = 0.1 (92.0%)" in _table_text(il_report)


def test_scale_report_marks_best_scale(scale_report: Path) -> None:
    out = scale_report.parent
    _png_ok(out / PLOTS["scale"])
    assert not (out / PLOTS["inner_lr"]).exists()
    table = pd.read_csv(out / "scale_table.csv")
    best = {r.images_per_label: r.lr_scale for r in table[table["best"]].itertuples()}
    assert best == {10: 0.5, 50: 2.0}
    summary = _table_text(out / "scale_summary.md")
    assert "| oracle: best scale per task (%) | 90.0 |" in summary
    assert "| one fixed scale | 0.5 |" in summary
    assert "| accuracy at the fixed scale (%) | 87.5 |" in summary
    assert "| share of the oracle gain the fixed scale captures | 0.50 |" in summary


def test_index_html_references_every_png(
    frozen_report: Path, il_report: Path, scale_report: Path
) -> None:
    for index in (frozen_report, il_report, scale_report):
        out = index.parent
        page = (out / "index.html").read_text(encoding="utf-8")
        sources = set(re.findall(r'<img src="([^"]+)"', page))
        pngs = {p.name for p in out.glob("*.png")}
        assert pngs and sources == pngs
        assert "http" not in page
        for md in out.glob("*.md"):
            if md.name != "index.md":
                assert f'href="{md.stem}.csv"' in page


def test_frame_without_il_ll_columns_writes_no_il_plot(
    frozen_frame: pd.DataFrame, tmp_path: Path
) -> None:
    frame = frozen_frame.drop(columns=["base_lr"])
    out = write_report(frame, tmp_path, "no rates").parent
    assert not (out / PLOTS["inner_lr"]).exists()
    assert not (out / "alpha_beta.md").exists()


def test_learning_curves(frozen_frame: pd.DataFrame, tmp_path: Path) -> None:
    epochs = np.arange(1, 11)
    curves = {
        f"run{i:04d}": pd.DataFrame(
            {
                "step": epochs,
                "val_acc": 0.9 - 0.05 * j - 0.4 * np.exp(-epochs / (2 + j)),
                "train_acc": 0.99 - 0.5 * np.exp(-epochs / (1.5 + j)),
            }
        )
        for j, i in enumerate((11, 5, 13))
    }
    index = write_report(frozen_frame, tmp_path, "curves", curves=curves)
    _png_ok(tmp_path / PLOTS["curves"])
    assert PLOTS["curves"] in index.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="run0005 lacks column"):
        write_report(frozen_frame, tmp_path, "bad", curves={"run0005": pd.DataFrame({"step": [1]})})


def test_writing_twice_gives_identical_files(
    il_frame: pd.DataFrame, frozen_frame: pd.DataFrame, tmp_path: Path
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_report(il_frame, first, "same")
    before = _digests(first)
    write_report(il_frame, first, "same")
    write_report(il_frame, second, "same")
    assert _digests(first) == before == _digests(second)
    assert set(before) <= set(OUTPUT_FILES)
    # a different experiment in the same folder leaves no stale IL/LL files behind
    write_report(frozen_frame, first, "other")
    assert not (first / PLOTS["inner_lr"]).exists()
    assert not (first / "alpha_beta.csv").exists()


def test_no_finished_trial_is_an_error(frozen_frame: pd.DataFrame, tmp_path: Path) -> None:
    failed = frozen_frame.assign(status="FAILED")
    with pytest.raises(ValueError, match="no FINISHED trial"):
        write_report(failed, tmp_path / "r", "failed")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_report(frozen_frame, tmp_path / "file", "x")
