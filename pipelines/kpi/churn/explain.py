"""SHAP explanations of the churn model, exact for its linear form.

The model is a logistic regression over a transformed design matrix ``z(x)`` (standardised numerics,
one-hot categoricals). With independent (interventional) features the SHAP value of design column j is
``w_j * (z_j(x) - E_bg[z_j])`` in log-odds; a categorical feature's value is the sum over its one-hot
columns. So ``base + sum(contributions) == logit(p)`` exactly, with ``base = b + w . E_bg[z]``.
The global artifacts use ``shap.LinearExplainer`` itself on the same design matrix and are checked
against the closed form in the tests.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kpi.churn.model import ChurnModel

SUMMARY_PLOT = "shap/summary.png"
MEAN_ABS_JSON = "shap/mean_abs_shap.json"
MAX_BACKGROUND = 1000


def _grouping(model: ChurnModel) -> np.ndarray:
    """Matrix (design columns x features) that sums one-hot columns back into their feature."""
    names = model.feature_names
    position = {name: i for i, name in enumerate(names)}
    groups = np.zeros((len(model.coefficients), len(names)))
    for j, (feature, _) in enumerate(model.design_columns()):
        groups[j, position[feature]] = 1.0
    return groups


def background_mean(model: ChurnModel, background: pd.DataFrame | None = None) -> np.ndarray:
    """E[z] over the background rows; by default the training mean stored with the model."""
    if background is not None:
        return model.transform(background).mean(axis=0)
    stored = model.metadata.get("design_mean")
    if stored is None:
        raise ValueError("the model carries no background mean; pass background rows")
    return np.asarray(stored, dtype=np.float64)


def shap_values(model: ChurnModel, df: pd.DataFrame, background: pd.DataFrame | None = None) -> tuple[float, np.ndarray]:
    """Exact SHAP values in log-odds per original feature: ``(base_value, array of shape (n, features))``."""
    w = np.asarray(model.coefficients)
    mean = background_mean(model, background)
    per_column = (model.transform(df) - mean) * w
    return float(model.intercept + mean @ w), per_column @ _grouping(model)


def explain_row(model: ChurnModel, row_df: pd.DataFrame, background: pd.DataFrame | None = None) -> pd.DataFrame:
    """Explain one prediction: a row per feature with its value and log-odds contribution.

    Args:
        model: the champion's :class:`ChurnModel`.
        row_df: one row with the model's feature columns.
        background: rows defining "average" (default: the training mean stored with the model).

    Returns:
        Columns ``feature, value, contribution`` sorted by |contribution|; ``attrs`` holds ``base_value``
        (log-odds), ``logit`` (= base_value + sum of contributions) and ``p_active_60d``.
    """
    if len(row_df) != 1:
        raise ValueError(f"explain_row takes exactly one row, got {len(row_df)}")
    base, values = shap_values(model, row_df, background)
    logit = float(model.decision_function(row_df)[0])
    out = pd.DataFrame(
        {
            "feature": model.feature_names,
            "value": [row_df.iloc[0][c] for c in model.feature_names],
            "contribution": values[0],
        }
    )
    out = out.reindex(out["contribution"].abs().sort_values(ascending=False).index).reset_index(drop=True)
    out.attrs.update({"base_value": base, "logit": logit, "p_active_60d": float(1.0 / (1.0 + np.exp(-logit)))})
    return out


def library_shap_values(model: ChurnModel, df: pd.DataFrame, background: pd.DataFrame) -> tuple[float, np.ndarray]:
    """SHAP values from ``shap.LinearExplainer`` on the design matrix, summed back per feature."""
    import shap

    z_bg = model.transform(background)
    explainer = shap.LinearExplainer(
        (np.asarray(model.coefficients), model.intercept),
        shap.maskers.Independent(z_bg, max_samples=len(z_bg)),
    )
    values = np.asarray(explainer.shap_values(model.transform(df)))
    return float(np.asarray(explainer.expected_value).ravel()[0]), values @ _grouping(model)


def _display_matrix(model: ChurnModel, df: pd.DataFrame) -> np.ndarray:
    """Feature values for the plot's colour: numerics as they are, categoricals as their index."""
    cols = []
    for c in model.numeric_features:
        cols.append(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float))
    for c in model.categorical_features:
        index = {label: i for i, label in enumerate(model.categories[c])}
        cols.append(np.array([index.get(v, len(index)) for v in df[c]], dtype=float))
    return np.column_stack(cols)


def global_explanations(
    model: ChurnModel, df: pd.DataFrame, background: pd.DataFrame, out_dir: Path, seed: int = 42, sample: int = 2000
) -> dict[str, float]:
    """Write ``summary.png`` and ``mean_abs_shap.json`` into ``out_dir``; return mean |SHAP| per feature."""
    import matplotlib

    matplotlib.use("Agg")  # no display in jobs and CI
    import matplotlib.pyplot as plt
    import shap

    rows = df.sample(n=min(sample, len(df)), random_state=seed) if len(df) > sample else df
    bg = background.sample(n=min(MAX_BACKGROUND, len(background)), random_state=seed)
    _, values = library_shap_values(model, rows, bg)
    mean_abs = dict(
        sorted(
            ((f, float(v)) for f, v in zip(model.feature_names, np.abs(values).mean(axis=0), strict=True)),
            key=lambda kv: -kv[1],
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mean_abs_shap.json").write_text(json.dumps(mean_abs, indent=1))
    plt.figure()
    shap.summary_plot(values, _display_matrix(model, rows), feature_names=model.feature_names, show=False)
    plt.title("Churn model: SHAP values (log-odds of activity in the next 60 days)")
    plt.tight_layout()
    plt.savefig(out_dir / "summary.png", dpi=110)
    plt.close("all")
    return mean_abs


def log_global_explanations(
    model: ChurnModel, df: pd.DataFrame, background: pd.DataFrame, run_id: str, seed: int = 42
) -> dict[str, Any]:
    """Compute the global SHAP artifacts and log them under ``shap/`` on ``run_id``."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shap"
        mean_abs = global_explanations(model, df, background, out, seed=seed)
        mlflow.MlflowClient().log_artifacts(run_id, str(out), artifact_path="shap")
    return mean_abs
