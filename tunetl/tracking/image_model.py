"""The delivered image classifier as an MLflow model: logged on a search's parent run, registered under an
alias, loaded back by URI (`models:/NAME@champion`, `runs:/...`, `models:/m-...`, a folder).

One model folder, two flavours:
- `python_function` (this module is its loader): raw images in -- a DataFrame with an `image` column of
  encoded image bytes (PNG, JPEG, ...; base64 in JSON when served) or uint8 arrays, or a plain list of
  either -- and a DataFrame out: `label`, `probability` (of that label) and `probabilities` (every class,
  in the order of the model's `class_names` metadata). Preprocessing and class names are inside. It is
  rebuilt from `classifier/classifier.json` and a plain state dict: nothing is unpickled.
- `pytorch`: the same `ImageClassifier` for `mlflow.pytorch.load_model` (uint8 (B, C, H, W) in,
  probabilities out), as MLflow's default `pt2` (torch.export) graph: no pickle either.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetl.tracking.registry import (
    KIND_TAG,
    _check_name,
    _global_tracking_uri,
    _no_progress_bar,
    parse_model_ref,
    register_version,
)
from tunetl.tracking.trial_logger import client_for
from tunetl.tracking.uri import TrackingError, redact

if TYPE_CHECKING:
    import pandas as pd

    from tunetl.classifier import ImageClassifier

MODEL_NAME_IN_RUN = "classifier"
ALIAS = "champion"
#: Model-version tags that say what a version scored; the alias moves only to a version that beats it.
TEST_TAG, SCORE_TAG, DATASET_TAG = "tunetl.test_acc", "tunetl.score", "tunetl.dataset"
_DATA = "classifier"
_TORCH = "pytorch"
IMAGE_COLUMN = "image"


class ImagePyfunc:
    """What `mlflow.pyfunc.load_model(...).predict` runs: raw images -> label, probability, probabilities."""

    def __init__(self, classifier: ImageClassifier) -> None:
        self.classifier = classifier

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        items = _images_of(model_input)
        probs = self.classifier.predict(items)
        names = self.classifier.spec.class_names
        best = probs.argmax(axis=1) if len(probs) else []
        return pd.DataFrame({
            "label": [names[i] for i in best],
            "probability": [float(p[i]) for p, i in zip(probs, best, strict=True)],
            "probabilities": [[float(v) for v in p] for p in probs],
        })


def _images_of(model_input: Any) -> list[Any]:
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = IMAGE_COLUMN if IMAGE_COLUMN in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if isinstance(model_input, dict):
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, (bytes, bytearray)):
        return [model_input]
    if isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8:
        return list(model_input) if model_input.ndim == 4 else [model_input]
    return list(model_input)


def _load_pyfunc(data_path: str) -> ImagePyfunc:
    """MLflow's entry point for the `python_function` flavour (`loader_module`)."""
    from tunetl.classifier import ImageClassifier

    return ImagePyfunc(ImageClassifier.load(data_path))


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability"),
                        ColSpec(Array("double"), "probabilities")]),
    )


def png_bytes(image: Any) -> bytes:
    """A uint8 (C, H, W) image encoded as PNG: the input example, and what tests send to a server."""
    import io

    import numpy as np
    from PIL import Image

    arr = np.asarray(image, dtype=np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _requirements() -> list[str]:
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "pillow", "tunetl"]


def _save_local(classifier: ImageClassifier, path: Path, mlflow_model: Any, example: bytes) -> None:
    import mlflow.pyfunc
    import mlflow.pytorch
    import pandas as pd
    import torch
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        data = classifier.save(Path(tmp) / _DATA)
        mlflow.pyfunc.save_model(
            str(path),
            loader_module=__name__,
            data_path=str(data),
            mlflow_model=mlflow_model,
            signature=_signature(),
            input_example=pd.DataFrame({IMAGE_COLUMN: [example]}),
            pip_requirements=_requirements(),
            metadata={"class_names": list(classifier.spec.class_names), "input": "images"},
        )
        torch_dir = Path(tmp) / "torch"
        # MLflow's default `pt2` format: a torch.export graph, loaded without unpickling code.
        mlflow.pytorch.save_model(classifier, str(torch_dir), input_example=classifier.example(2).numpy(),
                                  pip_requirements=_requirements())
        shutil.copytree(torch_dir / "data", path / _TORCH)
    model = Model.load(str(path / "MLmodel"))
    model.add_flavor("pytorch", model_data=_TORCH, pytorch_version=str(torch.__version__), code=None)
    model.save(str(path / "MLmodel"))


def log_classifier(
    classifier: ImageClassifier,
    tracking_uri: str,
    experiment_id: str,
    run_id: str,
    *,
    example: bytes,
    metrics: dict[str, float],
    tags: dict[str, str],
) -> str:
    """Log the classifier as a model of `run_id` (the search's parent run); returns its model id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    client = client_for(tracking_uri)
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME_IN_RUN, source_run_id=run_id,
                                        tags={KIND_TAG: "image_classifier", **tags},
                                        model_type="tunetl-image-classifier")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    if metrics:
        import time

        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0, model_id=logged.model_id)
                                          for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / MODEL_NAME_IN_RUN
        mlflow_model = Model(artifact_path=logged.artifact_location, run_id=run_id,
                             model_uuid=logged.model_id, model_id=logged.model_id)
        _save_local(classifier, local, mlflow_model, example)
        client.log_model_artifacts(logged.model_id, str(local))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return str(logged.model_id)


def _as_float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def beats(new: dict[str, str], old: dict[str, str]) -> tuple[bool, str]:
    """Whether a version with tags `new` should take the alias from one with `old`: by test accuracy when
    both have one, else by score (best-epoch val_acc); strictly higher wins. Returns (wins, why)."""
    for tag, what in ((TEST_TAG, "test accuracy"), (SCORE_TAG, "validation score")):
        a, b = _as_float(new.get(tag)), _as_float(old.get(tag))
        if a is not None and b is not None:
            return a > b, f"{what} {100 * a:.1f}% vs {100 * b:.1f}%"
    return True, "the current champion records no comparable accuracy"


def register_classifier(
    tracking_uri: str, name: str, run_id: str, model_id: str, tags: dict[str, str], description: str
) -> tuple[int, bool, str]:
    """Register the logged model as the next version of `name`; move the `champion` alias to it only if it
    beats the current champion. Returns (version, alias moved, why)."""
    from mlflow.exceptions import MlflowException

    _check_name(name)
    client = client_for(tracking_uri)
    with _global_tracking_uri(tracking_uri):
        version = register_version(client, name, run_id, model_id, description, kind="image_classifier", tags=tags)
        try:
            current = client.get_model_version_by_alias(name, ALIAS)
        except MlflowException:
            current = None
        if current is None:
            client.set_registered_model_alias(name, ALIAS, str(version))
            return version, True, "first champion"
        wins, why = beats(tags, dict(current.tags or {}))
        if wins:
            client.set_registered_model_alias(name, ALIAS, str(version))
            return version, True, f"beats version {current.version}: {why}"
        return version, False, f"does not beat version {current.version}: {why}"


def _local_model_dir(uri: str, tracking_uri: str, dst: str) -> Path:
    """Download a model URI to `dst` (a local folder is used as it is)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    if Path(uri).is_dir():
        return Path(uri)
    with _global_tracking_uri(tracking_uri), _no_progress_bar():
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst,
                                                            tracking_uri=tracking_uri))
        except MlflowException as exc:
            hint = ""
            if uri.startswith("models:/"):
                name, _ = parse_model_ref(uri)
                hint = f"; is {name} registered there (`tunetl run ... --register-model {name}`)?"
            raise TrackingError(f"cannot load model {uri} from {redact(tracking_uri)}: {exc.message}{hint}") from None


def _pyfunc_flavor(local: Path) -> dict[str, Any]:
    import yaml

    try:
        body = yaml.safe_load((local / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return dict((body.get("flavors") or {}).get("python_function") or {})


def load_classifier(uri: str, tracking_uri: str) -> ImageClassifier:
    """The `ImageClassifier` behind a model URI logged by tunetl (rebuilt from JSON + state dict)."""
    from tunetl.classifier import SPEC_FILE, ImageClassifier

    with tempfile.TemporaryDirectory() as tmp:
        local = _local_model_dir(uri, tracking_uri, tmp)
        flavor = _pyfunc_flavor(local)
        folder = local / str(flavor.get("data") or _DATA)
        if flavor.get("loader_module") != __name__ or not (folder / SPEC_FILE).is_file():
            raise TrackingError(f"model {uri} is not a tunetl image classifier (no {_DATA}/{SPEC_FILE}); "
                                "log one with `tunetl run` (it logs the winner of every search)")
        return ImageClassifier.load(folder)
