"""Meta-models in the MLflow model registry: log with their training data, register, load back.

Format: the MLflow sklearn flavour with skops serialisation (`mlflow.sklearn.save_model(...,
serialization_format="skops")`), so the MLmodel/requirements files and the registry UI are the
standard ones. It works because `MetaModel` is a plain class whose state is sklearn estimators,
numpy arrays and builtins (its table is stored as lists), which skops writes without pickle. Loading
bypasses `mlflow.sklearn.load_model` on purpose: that reads the trusted-types list from the
artifact itself (so MLflow 3.17 refuses it unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set);
here the allow-list is `TRUSTED_TYPES` in this file, so a crafted artifact cannot widen it.
The pyfunc flavour works too (`MetaModel.predict` on a frame of features gives a frame).

Only MlflowClient calls with explicit experiment/run/model ids: nothing sets a process-wide
experiment (see ENVIRONMENT.md on `mlflow.set_experiment`).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetl.tracking.recorder import get_or_create_experiment
from tunetl.tracking.trial_logger import client_for, log_params
from tunetl.tracking.uri import TrackingError, redact

if TYPE_CHECKING:
    from tunetl.meta.regressor import MetaModel

DEFAULT_EXPERIMENT = "tunetl-meta-models"
#: The name `fit-regressor` registers under and `predict` loads when none is given.
DEFAULT_MODEL_NAME = "tunetl-meta-model"
MODEL_NAME_IN_RUN = "meta_model"
TABLE_ARTIFACT = "meta_dataset.csv"
#: Non-default types skops may rebuild from a meta-model file (sklearn/numpy basics are built in).
TRUSTED_TYPES = ["tunetl.meta.regressor.MetaModel", "tunetl.meta.parts.Part", "sklearn.tree._tree.Tree"]
KIND_TAG = "tunetl.kind"
_SKOPS_FILE = "model.skops"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$")


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"registered model name {name!r} must start with a letter or digit and hold only "
            "letters, digits, '_', '.', '-' or spaces ('@' and '/' select versions)"
        )


def _pip_requirements() -> list[str]:
    import sklearn
    import skops

    return [
        f"scikit-learn=={sklearn.__version__}",
        f"skops=={skops.__version__}",
        "pandas",
        "numpy",
        "tunetl",
    ]


def _save_local(model: MetaModel, path: Path, mlflow_model: Any) -> None:
    import mlflow.sklearn

    mlflow.sklearn.save_model(
        model,
        str(path),
        mlflow_model=mlflow_model,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=TRUSTED_TYPES,
        pip_requirements=_pip_requirements(),
    )


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's SQLite model registry resolves `models:/m-...` through the *global* tracking store,
    not the client's; point it at `uri` for the call and restore what was there (no leak)."""
    import mlflow

    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri() if before_env is None else before_env
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env


def register_version(client: Any, name: str, run_id: str, model_id: str, description: str, *, kind: str,
                     tags: dict[str, str] | None = None) -> int:
    """The logged model as the next version of `name` (created, tagged with its kind, on first use)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description, tags={KIND_TAG: kind})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run_id,
        model_id=model_id,
        description=description,
        tags={KIND_TAG: kind, **(tags or {})},
    )
    return int(version.version)


def log_meta_model(
    model: MetaModel,
    tracking_uri: str,
    experiment_name: str = DEFAULT_EXPERIMENT,
    register: str | None = None,
    description: str | None = None,
) -> tuple[str, int | None]:
    """Log `model` in its own run (params, LOTO metrics, the meta-dataset CSV, the model) and, with
    `register`, add it as the next version of that registered model. Returns (run_id, version)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    if register is not None:
        _check_name(register)
    text = description or model.description
    client = client_for(tracking_uri)
    experiment_id = get_or_create_experiment(tracking_uri, experiment_name)
    run = client.create_run(
        experiment_id,
        run_name=f"meta-model {register}" if register else "meta-model",
        tags={KIND_TAG: "meta_model", "mlflow.note.content": text},
    )
    run_id = run.info.run_id
    try:
        table = model.table
        experiments = sorted(
            {e for cell in table.get("experiments", []) for e in str(cell).split(",") if e}
        )
        log_params(
            client,
            run_id,
            {
                "targets": ",".join(model.targets),
                "kind": model.kind,
                "features": ",".join(model.features),
                "n_rows": len(table),
                "n_tasks": model.n_tasks,
                "experiments": ",".join(experiments),
                "metric": table.attrs.get("metric", "best_val_acc"),
            },
        )
        loto = {k: float(v) for k, v in (model.loto or {}).items() if math.isfinite(v)}
        if loto:
            now = run.info.start_time or 0
            client.log_batch(
                run_id, metrics=[Metric(f"loto.{k}", v, now, 0) for k, v in sorted(loto.items())]
            )
        logged = client.create_logged_model(
            experiment_id,
            name=MODEL_NAME_IN_RUN,
            source_run_id=run_id,
            tags={KIND_TAG: "meta_model"},
            model_type="tunetl-meta-model",
        )
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / TABLE_ARTIFACT
            table.to_csv(csv, index=False)
            client.log_artifact(run_id, str(csv))
            local = Path(tmp) / MODEL_NAME_IN_RUN
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                run_id=run_id,
                model_uuid=logged.model_id,
                model_id=logged.model_id,
            )
            _save_local(model, local, mlflow_model)
            client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        if register:
            with _global_tracking_uri(tracking_uri):
                version = register_version(client, register, run_id, logged.model_id, text, kind="meta_model")
        else:
            version = None
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id, version


def parse_model_ref(name_or_uri: str, version: int | str | None = None) -> tuple[str, str | None]:
    """`NAME`, `NAME@3`, `NAME@alias`, `models:/NAME/3`, `models:/NAME@alias` -> (name, ref);
    ref is a version number as text, an alias, or None for the newest version."""
    text = name_or_uri.strip()
    ref: str | None = None
    if text.startswith("models:/"):
        body = text[len("models:/") :].strip("/")
        if "@" in body:
            text, ref = body.split("@", 1)
        elif "/" in body:
            text, ref = body.split("/", 1)
        else:
            text = body
    elif "@" in text:
        text, ref = text.split("@", 1)
    if version is not None:
        if ref is not None and ref != str(version):
            raise ValueError(
                f"{name_or_uri!r} names version {ref} but version={version} was passed too"
            )
        ref = str(version)
    if ref is not None and (not ref or ref.lower() == "latest"):
        ref = None
    if not text:
        raise ValueError(f"no model name in {name_or_uri!r}; use NAME, NAME@VERSION or NAME@ALIAS")
    return text, ref


def _model_version(client: Any, name: str, ref: str | None, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    where = redact(tracking_uri)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(
            f"no registered model {name} at {where}: run `tunetl fit-regressor --experiment ... "
            f"--register {name}` first"
        ) from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if not versions:
        raise TrackingError(
            f"registered model {name} at {where} has no versions: run `tunetl fit-regressor "
            f"--experiment ... --register {name}`"
        )
    if ref is None:
        return client.get_model_version(name, str(versions[-1]))
    if ref.isdigit():
        if int(ref) not in versions:
            raise TrackingError(
                f"registered model {name} at {where} has no version {ref}; versions: "
                f"{', '.join(map(str, versions))}"
            )
        return client.get_model_version(name, ref)
    try:
        return client.get_model_version_by_alias(name, ref)
    except MlflowException:
        aliases = sorted(client.get_registered_model(name).aliases or {})
        raise TrackingError(
            f"registered model {name} at {where} has no alias {ref!r}; aliases: "
            f"{', '.join(aliases) or 'none'}; versions: {', '.join(map(str, versions))}"
        ) from None


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """Two small files need no tqdm bar on the terminal; the user's own setting wins."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _artifact_location(client: Any, mv: Any) -> str:
    """Where a version's files are: its logged model's artifact location (the SQLite store returns
    `model_id` None and the source `models:/<model_id>`), else its source."""
    source = str(mv.source)
    model_id = getattr(mv, "model_id", None)
    if not model_id and source.startswith("models:/m-"):
        model_id = source[len("models:/") :].strip("/")
    return str(client.get_logged_model(model_id).artifact_location) if model_id else source


def load_meta_model(
    name_or_uri: str, tracking_uri: str, version: int | str | None = None
) -> tuple[MetaModel, str, int]:
    """The registered meta-model (newest version unless `NAME@N`, `NAME@alias` or `version`)."""
    import mlflow.artifacts
    import skops.io
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from skops.io.exceptions import UntrustedTypesFoundException


    name, ref = parse_model_ref(name_or_uri, version)
    client = client_for(tracking_uri)
    mv = _model_version(client, name, ref, tracking_uri)
    source = _artifact_location(client, mv)
    shown = f"registered model {name} version {mv.version} at {redact(tracking_uri)}"
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        try:
            files = {
                f: Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=f"{source.rstrip('/')}/{f}",
                        dst_path=tmp,
                        tracking_uri=tracking_uri,
                        registry_uri=tracking_uri,
                    )
                )
                for f in ("MLmodel", _SKOPS_FILE)
            }
            flavor = Model.load(str(files["MLmodel"])).flavors.get("sklearn", {})
        except MlflowException as exc:
            raise TrackingError(
                f"{shown} has no readable MLmodel/{_SKOPS_FILE} artifact ({exc.message}); it was not "
                "logged by `tunetl fit-regressor`"
            ) from None
        if flavor.get("serialization_format") != "skops":
            raise TrackingError(
                f"{shown} is not a tunetl meta-model (no skops sklearn flavour); register one with "
                "`tunetl fit-regressor --register NAME`"
            )
        try:
            model = skops.io.load(files[_SKOPS_FILE], trusted=TRUSTED_TYPES)
        except (
            UntrustedTypesFoundException,
            zipfile.BadZipFile,
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            ImportError,
        ) as exc:
            raise TrackingError(
                f"{shown} could not be loaded safely ({type(exc).__name__}: {exc}); refit it with "
                "`tunetl fit-regressor --register NAME`"
            ) from None
    if f"{type(model).__module__}.{type(model).__qualname__}" != TRUSTED_TYPES[0]:
        raise TrackingError(f"{shown} holds a {type(model).__name__}, not a tunetl MetaModel")
    return model, name, int(mv.version)
