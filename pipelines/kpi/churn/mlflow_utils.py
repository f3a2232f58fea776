"""MLflow plumbing of the churn model: tracking setup, the pyfunc wrapper, logging and loading versions."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from kpi.churn.model import MODEL_FILE, PREDICTION_COLUMN, ChurnModel
from kpi.settings import Settings

MODEL_ARTIFACT_NAME = "model"


def configure(settings: Settings) -> str:
    """Point MLflow (tracking and registry) at ``settings.resolved_mlflow_uri``; return that URI."""
    uri = settings.resolved_mlflow_uri
    if uri.startswith("sqlite:///"):
        # a local store needs its folder; nothing else is created
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def using_store(settings: Settings) -> Iterator[str]:
    """Point MLflow at the settings' store for the block, then restore the previous URIs exactly.

    ``mlflow.set_tracking_uri`` is process-global (and exports ``MLFLOW_TRACKING_URI``); restoring keeps
    other callers in the same process (tests, the dashboard) on their own store.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri,
             {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")})
    try:
        yield configure(settings)
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved[0], saved[1]
        for key, value in saved[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(settings: Settings):
    """An MlflowClient bound to the settings' store (no global state changed)."""
    uri = settings.resolved_mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def experiment_id(name: str, settings: Settings | None = None) -> str:
    """The id of experiment ``name``, created on first use.

    With a local store the artifacts go under ``<home>/mlartifacts`` (not the current directory); a
    tracking server decides its own artifact root (proxied to S3 in the cluster).
    """
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if settings is not None and _local_store(settings.resolved_mlflow_uri):
        location = (settings.home_dir / "mlartifacts" / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


class ChurnPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around :class:`ChurnModel`: a DataFrame of features in, ``p_active_60d`` out."""

    def load_context(self, context) -> None:
        self.model = ChurnModel.load(context.artifacts["churn_model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return pd.DataFrame({PREDICTION_COLUMN: self.model.predict_proba(model_input)})


def signature_for(model: ChurnModel):
    """Input: every feature, optional (missing values are imputed or go to the unknown slot)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("double", c, required=False) for c in model.numeric_features]
    inputs += [ColSpec("string", c, required=False) for c in model.categorical_features]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", PREDICTION_COLUMN)]))


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc (given explicitly: inference would start a subprocess)."""
    import numpy
    import sklearn

    return [f"mlflow=={mlflow.__version__}", f"numpy=={numpy.__version__}", f"pandas=={pd.__version__}",
            f"scikit-learn=={sklearn.__version__}", "kpi-platform"]


def log_and_register(settings: Settings, model: ChurnModel, input_example: pd.DataFrame, tags: dict[str, str]):
    """Log ``model`` as a pyfunc in the active run and register it as a new version; return the ModelVersion."""
    example = input_example[model.feature_names].copy()
    for c in model.categorical_features:
        example[c] = example[c].astype(object).where(example[c].notna(), None)
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / MODEL_FILE)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=ChurnPyfunc(),
            artifacts={"churn_model": str(path)},
            signature=signature_for(model),
            input_example=example,
            registered_model_name=settings.churn_model_name,
            pip_requirements=pip_requirements(),
            tags=tags,
        )
    mlflow_client = client(settings)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(settings.churn_model_name, version, key, str(value))
    return mlflow_client.get_model_version(settings.churn_model_name, version)


def load_version_model(settings: Settings, version: int | str) -> ChurnModel:
    """The :class:`ChurnModel` of registered version ``version`` (through the pyfunc loader)."""
    with using_store(settings):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.churn_model_name}/{version}")
    return pyfunc.unwrap_python_model().model


def download_run_artifact(settings: Settings, run_id: str, path: str, dst: str | Path) -> Path:
    """Download one artifact of ``run_id`` into ``dst``; return the local path."""
    with using_store(settings):
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))
