"""The end of a search against a real MLflow server: test accuracy of the selected configurations, the
winner registered as `champion`, classified through the alias, served over HTTP, exported and compared;
a search that does not win leaves the alias; a search where every trial failed registers nothing.

One winning search (2 trials, 3 epochs) is shared by the module; the other two searches have 1 trial.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port, _stop_group
from tunetl import api
from tunetl.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "experiments" / "quickstart.yaml")
MODEL = "digits-winner"
#: Trials of the condition named "doomed" raise after their first epoch (Ray's workers inherit this).
FAULT = json.dumps({"match": "doomed", "raise_from": 1})


def _sets(space: str, *extra: str) -> list[str]:
    return ["training.epochs=3", "source.epochs=3", "scheduler.type=none", "seeds=[0]",
            "dataset.test_fraction=0.2", f"search_space={space}", *extra]


@pytest.fixture(scope="module")
def ray_local():  # type: ignore[no-untyped-def]
    import ray

    old = os.environ.get("TUNETL_FAULT")
    os.environ["TUNETL_FAULT"] = FAULT
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("TUNETL_FAULT", None)
    else:
        os.environ["TUNETL_FAULT"] = old


@pytest.fixture(scope="module")
def winner(ray_local, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One search, registered: FTall at 5 and 20 images per label."""
    storage = tmp_path_factory.mktemp("runs")
    space = "{conditions: {grid: [{name: FTall, frozen_depth: 0}]}, images_per_label: {grid: [5, 20]}}"
    summary = api.run(QUICK, overrides=_sets(space), name="delivery", tracking_uri=mlflow_server,
                      storage=storage, register_model=MODEL)
    return summary, storage


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 PNG files of the test split (digits 5-9), named INDEX_LABEL.png."""
    from tunetl.data import DatasetSpec, load_dataset
    from tunetl.tracking.image_model import png_bytes

    folder = tmp_path_factory.mktemp("images")
    task = load_dataset(DatasetSpec(builtin="digits", classes=[5, 6, 7, 8, 9], test_fraction=0.2))
    assert task.test is not None
    x, y = next(iter(task.test.batches(batch_size=100)))
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (folder / f"{i:03d}_{task.class_names[int(label)]}.png").write_bytes(png_bytes(img.numpy()))
    return folder


def test_search_registers_its_winner_with_test_accuracy(winner, mlflow_server: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    summary, _ = winner
    delivery = summary.delivery
    assert delivery.registered == MODEL and delivery.version == 1 and delivery.champion
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1"
    parent = client.get_run(summary.parent_run_id)
    # selected configurations: the overall best and the best per images-per-label group
    assert {"test_acc", "test_acc_ipl_5", "test_acc_ipl_20", "model_test_acc"} <= set(parent.data.metrics)
    assert 0.6 < parent.data.metrics["model_test_acc"] <= 1.0
    assert float(version.tags["tunetl.test_acc"]) == pytest.approx(parent.data.metrics["model_test_acc"], abs=1e-6)
    # the final table and `tunetl best` show it; the score is the best epoch's val_acc
    assert summary.best["test_acc_mean"].notna().all()
    assert main(["best", "--experiment", "delivery", "--tracking-uri", mlflow_server, "--json",
                 "--group-by", "images_per_label"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["images_per_label"] for r in rows] == [5, 20]
    assert all(r["test_acc_mean"] is not None and r["best_val_acc_mean"] is not None for r in rows)


def test_classify_with_the_alias(winner, images: Path, mlflow_server: str, capsys) -> None:  # type: ignore[no-untyped-def]
    summary, _ = winner
    assert main(["classify", "--model", f"models:/{MODEL}@champion", str(images), "--top-k", "2", "--json",
                 "--tracking-uri", mlflow_server]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 100 and all(len(r["predictions"]) == 2 for r in results)
    right = sum(r["predictions"][0]["label"] == Path(r["path"]).stem.split("_")[1] for r in results)
    assert right >= 60  # the model's test accuracy is ~0.85 on these images
    first = results[0]["predictions"]
    assert first[0]["probability"] >= first[1]["probability"]


def test_export_agrees_with_pytorch(winner, tmp_path: Path, mlflow_server: str) -> None:  # type: ignore[no-untyped-def]
    for fmt in ("onnx", "torchscript"):
        out = tmp_path / f"model.{fmt}"
        assert main(["export-model", "--model", f"models:/{MODEL}@champion", "--format", fmt, "--out", str(out),
                     "--tracking-uri", mlflow_server]) == 0
        meta = json.loads(out.with_name(out.name + ".json").read_text())
        assert meta["images_checked"] == 32 and meta["max_abs_diff"] <= 1e-4
        assert meta["output"]["classes"] == ["5", "6", "7", "8", "9"]


def test_served_model_answers_a_post(winner, images: Path, mlflow_server: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # The scoring server runs `uvicorn` from PATH: this environment's, as with an activated venv.
    env.update(MLFLOW_TRACKING_URI=mlflow_server, PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with direct.open(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        files = sorted(images.glob("*.png"))[:3]
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(f.read_bytes()).decode()] for f in files]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with direct.open(request, timeout=60) as r:
            answer = json.loads(r.read())
    finally:
        _stop_group(proc)
    predictions = answer["predictions"]
    assert len(predictions) == 3
    local = api.classify(f"models:/{MODEL}@champion", files, mlflow_server)
    for served, mine in zip(predictions, local, strict=True):
        assert served["label"] == mine["predictions"][0]["label"]
        assert served["probability"] == pytest.approx(mine["predictions"][0]["probability"], abs=1e-6)
        assert len(served["probabilities"]) == 5


def test_a_search_that_does_not_win_leaves_the_champion(winner, mlflow_server: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    space = "{transfer_depth: 0, images_per_label: 5, base_lr: 0.00001}"
    summary = api.run(QUICK, overrides=_sets(space, "training.epochs=1"), name="delivery",
                      tracking_uri=mlflow_server, storage=tmp_path / "runs", register_model=MODEL)
    assert summary.delivery.version == 2 and not summary.delivery.champion
    assert any("alias champion left on the current champion" in n for n in summary.delivery.notes)
    assert MlflowClient(mlflow_server).get_model_version_by_alias(MODEL, "champion").version == "1"


def test_a_search_whose_trials_all_failed_registers_nothing(winner, mlflow_server: str, tmp_path: Path,
                                                            capsys) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    args = ["run", QUICK, "--name", "doomed", "--tracking-uri", mlflow_server, "--storage", str(tmp_path / "runs"),
            "--register-model", MODEL]
    space = "{conditions: {grid: [{name: doomed, transfer_depth: 0, frozen_depth: 0}]}, images_per_label: 5}"
    for item in _sets(space, "training.epochs=2"):
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no model logged or registered: all 1 trial(s) failed" in err
    versions = MlflowClient(mlflow_server).search_model_versions(f"name = '{MODEL}'")
    assert all(v.tags.get("tunetl.experiment") != "doomed" for v in versions)
