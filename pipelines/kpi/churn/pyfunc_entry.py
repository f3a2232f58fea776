"""MLflow "models from code" entry of the churn model: ``mlflow.pyfunc.load_model`` executes this file.

It is stored in the artefact next to ``artifacts/churn_model.json`` (the parameters, plain JSON) and a copy
of :mod:`kpi.churn.model` named ``kpi_churn_model`` in the artefact's ``code/`` folder, so the pyfunc
needs numpy, pandas and mlflow only: no ``kpi`` package, nothing pickled. The platform itself never
loads models through this file (:func:`kpi.churn.mlflow_utils.load_version_model` reads the JSON):
a file in the artefact store is code only for MLflow tools such as ``mlflow models serve``.

Importing this module registers the model with ``mlflow.models.set_model`` (the models-from-code
contract); nothing in the ``kpi`` package imports it.
"""

import mlflow
import pandas as pd

try:  # the copy bundled in the artefact's code/ folder (on sys.path when MLflow loads the model)
    from kpi_churn_model import PREDICTION_COLUMN, ChurnModel
except ImportError:  # MLflow runs this file once while logging, in the platform's own process
    from kpi.churn.model import PREDICTION_COLUMN, ChurnModel


class ChurnPyfunc(mlflow.pyfunc.PythonModel):
    """A DataFrame of features in, ``p_active_60d`` out."""

    def load_context(self, context) -> None:
        """Read the model's parameters from the artefact's JSON."""
        self.model = ChurnModel.load(context.artifacts["churn_model"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Probability of at least one payment in the next 60 days per row."""
        return pd.DataFrame({PREDICTION_COLUMN: self.model.predict_proba(model_input)})


mlflow.models.set_model(ChurnPyfunc())
