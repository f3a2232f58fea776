"""MLflow plumbing of the churn model: store selection, the pyfunc artefact, logging and loading versions.

The registered artefact is an MLflow "models from code" pyfunc (:mod:`kpi.churn.pyfunc_entry`) whose
parameters are data: ``artifacts/churn_model.json``. Its requirements are pinned public packages only
(mlflow, numpy, pandas; numba and llvmlite for trees); the scoring code it needs is bundled as ``code/kpi_churn_model.py``, a copy of
:mod:`kpi.churn.model`, never a package name that an index could resolve to someone else's code.

The platform loads versions with :func:`load_version_model`, which downloads the JSON alone and parses
it: loading a model never executes a file from the artefact store (no pickle, no stored Python).

Every function takes the store from the settings: clients are bound to it explicitly, and the
process-wide MLflow URI is only set inside :func:`using_store` (training's fluent API needs it), through
MLflow's public ``set_tracking_uri`` / ``set_registry_uri`` and restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd

from kpi.churn.model import MODEL_FILE, PREDICTION_COLUMN, ChurnModel
from kpi.settings import Settings

MODEL_ARTIFACT_NAME = "model"
MODEL_JSON_PATH = f"artifacts/{MODEL_FILE}"  # inside the logged model's folder
BUNDLED_MODULE = "kpi_churn_model"  # the copy of kpi/churn/model.py in the artefact's code/ folder
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _prepare_local_store(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        # a local store needs its folder; nothing else is created
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def configure(settings: Settings) -> str:
    """Point MLflow's process-wide tracking and registry at ``settings.resolved_mlflow_uri``; return it.

    For processes that own their MLflow state (the training job); elsewhere use :func:`using_store`.
    """
    uri = _prepare_local_store(settings.resolved_mlflow_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def using_store(settings: Settings) -> Iterator[str]:
    """Point MLflow at the settings' store for the block, then back at the store it used before.

    ``mlflow.set_tracking_uri`` is process-wide (and exports ``MLFLOW_TRACKING_URI``); restoring the
    previous URIs and environment keeps other callers in the same process (tests, the dashboard) on
    their own store. Only MLflow's public getters and setters are used.
    """
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    environment = {k: os.environ.get(k) for k in _URI_VARIABLES}
    try:
        yield configure(settings)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(settings: Settings) -> mlflow.MlflowClient:
    """An MlflowClient bound to the settings' store (no global state changed)."""
    uri = _prepare_local_store(settings.resolved_mlflow_uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def experiment_id(name: str, settings: Settings) -> str:
    """The id of experiment ``name`` in the settings' store, created on first use.

    With a local store the artifacts go under ``<home>/mlartifacts`` (not the current directory); a
    tracking server decides its own artifact root (proxied to S3 in the cluster).
    """
    mlflow_client = client(settings)
    existing = mlflow_client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if _local_store(settings.resolved_mlflow_uri):
        location = (settings.home_dir / "mlartifacts" / name).as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def signature_for(model: ChurnModel):
    """Input: every feature, optional (missing values are imputed or go to the unknown slot)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("double", c, required=False) for c in model.numeric_features]
    inputs += [ColSpec("string", c, required=False) for c in model.categorical_features]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", PREDICTION_COLUMN)]))


def pip_requirements(model: ChurnModel) -> list[str]:
    """Pinned requirements of ``model``'s pyfunc: public packages only, the scoring code is bundled.

    Tree models add numba (and its llvmlite): the bundled module compiles the traversal with it.
    """
    from importlib.metadata import version

    names = ["mlflow", "numpy", "pandas"] + (["numba", "llvmlite"] if model.trees is not None else [])
    return [f"{name}=={version(name)}" for name in names]


def _bundle(tmp: Path) -> tuple[Path, Path]:
    """The models-from-code entry file and the scoring module to bundle, copied into ``tmp``."""
    from kpi.churn import model as model_module

    code = tmp / f"{BUNDLED_MODULE}.py"
    shutil.copyfile(model_module.__file__, code)
    return Path(__file__).with_name("pyfunc_entry.py"), code


def log_and_register(settings: Settings, model: ChurnModel, input_example: pd.DataFrame, tags: dict[str, str]):
    """Log ``model`` as a pyfunc in the active run and register it as a new version; return the ModelVersion."""
    example = input_example[model.feature_names].copy()
    for c in model.numeric_features:  # the signature says double
        example[c] = pd.to_numeric(example[c], errors="coerce").astype("float64")
    for c in model.categorical_features:
        example[c] = example[c].astype(object).where(example[c].notna(), None)
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / MODEL_FILE)
        entry, code = _bundle(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=str(entry),
            artifacts={"churn_model": str(path)},
            code_paths=[str(code)],
            signature=signature_for(model),
            input_example=example,
            registered_model_name=settings.churn_model_name,
            pip_requirements=pip_requirements(model),
            tags=tags,
        )
    mlflow_client = client(settings)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(settings.churn_model_name, version, key, str(value))
    return mlflow_client.get_model_version(settings.churn_model_name, version)


def load_version_model(settings: Settings, version: int | str) -> ChurnModel:
    """The :class:`ChurnModel` of registered version ``version``, read from its JSON parameters only.

    Nothing else of the artefact is downloaded or run: not the pyfunc entry, not the bundled code, not
    any pickle that someone may have put next to them.

    Raises:
        kpi.churn.model.ModelFormatError: when the stored JSON is not a valid churn model.
    """
    mlflow_client = client(settings)
    location = mlflow_client.get_model_version_download_uri(settings.churn_model_name, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/{MODEL_JSON_PATH}", dst_path=tmp,
            tracking_uri=settings.resolved_mlflow_uri,
        )
        return ChurnModel.load(local)


def download_run_artifact(settings: Settings, run_id: str, path: str, dst: str | Path) -> Path:
    """Download one artifact of ``run_id`` into ``dst``; return the local path."""
    return Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=settings.resolved_mlflow_uri))
