"""The churn scoring model without a JVM: a fitted Spark ML pipeline exported to plain numpy.

The Spark pipeline (see :func:`kpi.churn.train.preprocessing_stages`) is
``Imputer(median) -> VectorAssembler -> StandardScaler(mean, std) -> StringIndexer(keep) ->
OneHotEncoder(dropLast=False) -> VectorAssembler -> LogisticRegression``. :func:`export_pipeline`
reads every fitted statistic out of the ``PipelineModel`` into a :class:`ChurnModel`, which applies the
same arithmetic in numpy, so scoring needs neither Spark nor Java (parity is tested to 1e-6).

This module imports only numpy and pandas; Spark objects are touched inside :func:`export_pipeline` only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PREDICTION_COLUMN = "p_active_60d"
MODEL_FILE = "churn_model.json"
FORMAT_VERSION = 1


@dataclass
class ChurnModel:
    """A logistic regression over imputed, standardised numerics and one-hot categoricals.

    Attributes:
        numeric_features: numeric input columns, in the model's order.
        categorical_features: categorical input columns (strings; null or unseen -> the "unknown" slot).
        impute_values: median used for a missing numeric value (null or NaN), per numeric feature.
        scaler_mean: training mean of each numeric feature after imputation.
        scaler_std: training standard deviation of each numeric feature (0 -> the feature is ignored).
        categories: the indexer's labels per categorical feature, in index order; index ``len(labels)``
            is the slot of null and unseen values.
        coefficients: logistic-regression weights over ``design_columns()``.
        intercept: logistic-regression intercept.
        numeric_ranges: observed ``[min, max]`` in the training data, for forms and sanity checks.
        metadata: free-form facts about training (as_of, data_version, params).
    """

    numeric_features: list[str]
    categorical_features: list[str]
    impute_values: dict[str, float]
    scaler_mean: list[float]
    scaler_std: list[float]
    categories: dict[str, list[str]]
    coefficients: list[float]
    intercept: float
    numeric_ranges: dict[str, list[float]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = len(self.numeric_features) + sum(len(self.categories[c]) + 1 for c in self.categorical_features)
        if len(self.coefficients) != expected:
            raise ValueError(f"ChurnModel has {len(self.coefficients)} coefficients, its layout needs {expected}")
        self._prepare()

    # --- layout ---------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Precompute arrays used on every call (kept out of the dataclass fields and of the JSON)."""
        n_num = len(self.numeric_features)
        coef = np.asarray(self.coefficients, dtype=np.float64)
        self._impute = np.array([self.impute_values[c] for c in self.numeric_features], dtype=np.float64)
        self._mean = np.asarray(self.scaler_mean, dtype=np.float64)
        std = np.asarray(self.scaler_std, dtype=np.float64)
        # Spark's StandardScaler multiplies by 1/std and maps a zero std to a zero factor
        with np.errstate(divide="ignore"):
            self._scale = np.where(std == 0.0, 0.0, 1.0 / std)
        self._w_num = coef[:n_num]
        self._cat_blocks: list[tuple[str, dict[str, int], np.ndarray]] = []
        self._lookups: list[pd.Index] = []
        offset = n_num
        for col in self.categorical_features:
            labels = self.categories[col]
            size = len(labels) + 1
            self._cat_blocks.append((col, {label: i for i, label in enumerate(labels)}, coef[offset : offset + size]))
            self._lookups.append(pd.Index(labels, dtype=object))
            offset += size

    @property
    def feature_names(self) -> list[str]:
        """The input columns the model reads, numerics first."""
        return [*self.numeric_features, *self.categorical_features]

    def design_columns(self) -> list[tuple[str, str]]:
        """``(feature, level)`` per column of the transformed design matrix (level "" for numerics)."""
        cols = [(c, "") for c in self.numeric_features]
        for c in self.categorical_features:
            cols += [(c, label) for label in self.categories[c]] + [(c, "<unknown>")]
        return cols

    # --- scoring --------------------------------------------------------------------------------------
    def _numeric_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """Imputed, standardised numerics, shape (n, n_numeric)."""
        if not self.numeric_features:
            return np.zeros((len(df), 0))
        numeric = df[self.numeric_features]
        try:  # the usual case, numeric columns: one conversion, no per-column pandas work
            raw = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):  # text from forms or CSVs: coerce, unparsable -> missing
            raw = numeric.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        raw = np.where(np.isnan(raw), self._impute, raw)
        return (raw - self._mean) * self._scale

    def _category_indices(self, df: pd.DataFrame) -> list[np.ndarray]:
        """Indexer output per categorical feature (unknown and null -> len(labels))."""
        out = []
        for (col, index, _), lookup in zip(self._cat_blocks, self._lookups, strict=True):
            values = df[col].to_numpy(dtype=object)
            idx = lookup.get_indexer(values).astype(np.int64)
            # misses are nulls, unseen labels or non-strings (e.g. 5 for "5"): resolve those one by one
            for i in np.flatnonzero(idx < 0):
                idx[i] = index.get(_as_label(values[i]), len(index))
            out.append(idx)
        return out

    def _check_columns(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.feature_names if c not in df.columns]
        if missing:
            raise ValueError(f"input lacks the model's feature columns: {missing}")

    def decision_function(self, df: pd.DataFrame) -> np.ndarray:
        """The logit (log-odds of >= 1 payment in the next 60 days) per row."""
        self._check_columns(df)
        margin = self._numeric_matrix(df) @ self._w_num + self.intercept
        for (_, _, weights), idx in zip(self._cat_blocks, self._category_indices(df), strict=True):
            margin = margin + weights[idx]
        return margin

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Probability of at least one payment in the next 60 days, one float per row of ``df``."""
        margin = self.decision_function(df)
        # the same expression as Spark's LogisticRegressionModel, for bit-level parity
        return 1.0 / (1.0 + np.exp(-margin))

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """The dense design matrix the regression sees, columns as in :meth:`design_columns`."""
        self._check_columns(df)
        blocks = [self._numeric_matrix(df)]
        for (_, index, _), idx in zip(self._cat_blocks, self._category_indices(df), strict=True):
            onehot = np.zeros((len(df), len(index) + 1))
            onehot[np.arange(len(df)), idx] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks) if blocks else np.zeros((len(df), 0))

    # --- description ----------------------------------------------------------------------------------
    def input_schema(self) -> dict[str, dict[str, Any]]:
        """Per feature: ``type`` ("numeric"/"categorical"), observed ``min``/``max`` or ``categories``."""
        schema: dict[str, dict[str, Any]] = {}
        for c in self.numeric_features:
            lo, hi = self.numeric_ranges.get(c, [None, None])
            schema[c] = {"type": "numeric", "min": lo, "max": hi, "default": self.impute_values[c]}
        for c in self.categorical_features:
            labels = self.categories[c]
            schema[c] = {"type": "categorical", "categories": list(labels), "default": labels[0] if labels else None}
        return schema

    def example_frame(self, rows: int = 1) -> pd.DataFrame:
        """A plausible input (medians and most frequent categories), e.g. for signatures and forms."""
        data: dict[str, list] = {c: [float(self.impute_values[c])] * rows for c in self.numeric_features}
        for c in self.categorical_features:
            labels = self.categories[c]
            data[c] = [labels[0] if labels else None] * rows
        return pd.DataFrame(data, columns=self.feature_names)

    # --- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChurnModel:
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"churn model format {version} is not supported (expected {FORMAT_VERSION})")
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (floats round-trip exactly through ``repr``)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ChurnModel:
        """Read a model written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _as_label(value: Any) -> Any:
    """The indexer's view of a cell: strings as they are, missing -> None, anything else its str()."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


# --- metrics shared by training and promotion ------------------------------------------------------------
def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |observed rate - mean predicted| over equal-width probability bins."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / max(len(p), 1))


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, log loss, Brier score and ECE of probabilities ``p`` for binary labels ``y``."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    if np.isnan(p).any():
        raise ValueError(f"{int(np.isnan(p).sum())} predictions are NaN")
    if len(np.unique(y)) < 2:
        raise ValueError("metrics need both classes in the labels; the evaluation set has one")
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
    }


# --- export from Spark -------------------------------------------------------------------------------------
def export_pipeline(
    pipeline_model: Any,
    numeric_ranges: dict[str, list[float]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> ChurnModel:
    """Read the fitted statistics of the churn Spark ``PipelineModel`` into a :class:`ChurnModel`.

    Args:
        pipeline_model: the fitted pipeline built by :func:`kpi.churn.train.build_pipeline`.
        numeric_ranges: observed ``[min, max]`` per numeric feature (for :meth:`ChurnModel.input_schema`).
        metadata: stored with the model.

    Raises:
        ValueError: when the pipeline does not have the expected stages or layout.
    """
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.feature import (
        ImputerModel,
        OneHotEncoderModel,
        StandardScalerModel,
        StringIndexerModel,
        VectorAssembler,
    )

    stages = {type(s): s for s in pipeline_model.stages}
    assemblers = [s for s in pipeline_model.stages if isinstance(s, VectorAssembler)]
    lr = stages.get(LogisticRegressionModel)
    if lr is None or len(assemblers) != 2:
        raise ValueError("not a churn pipeline: expected two VectorAssemblers and a LogisticRegressionModel")
    numeric_assembler, final_assembler = assemblers
    imputer = stages.get(ImputerModel)
    numeric_features: list[str] = []
    impute_values: dict[str, float] = {}
    if imputer is not None:
        row = imputer.surrogateDF.collect()[0].asDict()
        imputed_to_raw = dict(zip(imputer.getOutputCols(), imputer.getInputCols(), strict=True))
        numeric_features = [imputed_to_raw[c] for c in numeric_assembler.getInputCols()]
        impute_values = {c: float(row[c]) for c in numeric_features}
    scaler = stages.get(StandardScalerModel)
    if scaler is not None and (not scaler.getWithMean() or not scaler.getWithStd()):
        raise ValueError("the churn pipeline's StandardScaler must use withMean and withStd")
    mean = scaler.mean.toArray().tolist() if scaler is not None else []
    std = scaler.std.toArray().tolist() if scaler is not None else []

    indexer = stages.get(StringIndexerModel)
    encoder = stages.get(OneHotEncoderModel)
    categorical_features: list[str] = []
    categories: dict[str, list[str]] = {}
    if indexer is not None:
        if indexer.getHandleInvalid() != "keep" or encoder is None or encoder.getDropLast():
            raise ValueError("categoricals must use StringIndexer(handleInvalid=keep) + OneHotEncoder(dropLast=False)")
        categorical_features = list(indexer.getInputCols())
        for col, labels in zip(categorical_features, indexer.labelsArray, strict=True):
            categories[col] = list(labels)
        sizes = list(encoder.categorySizes)
        if sizes != [len(categories[c]) + 1 for c in categorical_features]:
            raise ValueError(f"one-hot sizes {sizes} do not match indexer labels + unknown slot")
        order = [scaler.getOutputCol() if scaler is not None else None, *encoder.getOutputCols()]
        if list(final_assembler.getInputCols()) != [o for o in order if o is not None]:
            raise ValueError("final assembler inputs are not [scaled numerics, one-hot blocks in indexer order]")

    return ChurnModel(
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        impute_values=impute_values,
        scaler_mean=mean,
        scaler_std=std,
        categories=categories,
        coefficients=lr.coefficients.toArray().tolist(),
        intercept=float(lr.intercept),
        numeric_ranges={k: [float(v[0]), float(v[1])] for k, v in (numeric_ranges or {}).items()},
        metadata=dict(metadata or {}),
    )
