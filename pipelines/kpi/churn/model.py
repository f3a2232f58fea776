"""The churn scoring model without a JVM: the parameters of a fitted Spark pipeline, as plain data.

Two model families share one preprocessing: numerics whose missing values take a stored value, and
categoricals mapped to the index of their training label (null and unseen values share the extra
index ``len(labels)``, Spark's ``StringIndexer(handleInvalid="keep")``). On top of it:

- ``logistic_regression``: standardised numerics and one-hot categoricals (Spark's ``StandardScaler``,
  ``OneHotEncoder(dropLast=False)``) under an elastic-net logistic regression;
- ``gbt``: Spark's ``GBTClassifier`` trees over ``[numerics..., category indices...]`` with continuous
  splits (``x <= threshold`` goes left) and categorical splits (a set of indices goes left); the
  probability is Spark's ``1 / (1 + exp(-2 * sum(weight * leaf)))``.

:class:`ChurnModel` applies the same arithmetic as Spark (parity is tested to 1e-6) and is stored as
JSON: parameters only, so reading a model never runs code. :meth:`ChurnModel.from_dict` checks every
array before a model is built (sizes, indices, finite numbers, trees without cycles).

This module imports only numpy, pandas and the standard library (and numba when trees are first
scored): it is bundled as it is into the MLflow pyfunc artefact (see :mod:`kpi.churn.mlflow_utils`), which
therefore needs no ``kpi`` package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

PREDICTION_COLUMN = "p_active_60d"
MODEL_FILE = "churn_model.json"
FORMAT_VERSION = 2
LOGISTIC_REGRESSION = "logistic_regression"
GBT = "gbt"
FAMILIES = (LOGISTIC_REGRESSION, GBT)
MAX_TREE_DEPTH = 30  # Spark's own limit; bounds the traversal of a stored tree
UNKNOWN_LEVEL = "<unknown>"
# below this many rows a category is looked up in a dict: pd.Index.get_indexer costs ~0.2 ms a call whatever
# the size, which made pandas the bulk of a one-user prediction
DICT_LOOKUP_MAX_ROWS = 64

# what the model reads: a frame, or a mapping of column name -> 1-D array (the scoring API's checked columns)
Inputs = Union[pd.DataFrame, Mapping[str, Any]]


class ModelFormatError(ValueError):
    """A stored model whose content is not a valid churn model (names the field at fault)."""


# --- parameters of the two families ----------------------------------------------------------------------
@dataclass
class LinearParams:
    """Logistic regression over ``[standardised numerics, one-hot categoricals]``.

    Attributes:
        scaler_mean: training mean of each numeric feature after imputation.
        scaler_std: training standard deviation of each numeric (0 -> the feature is ignored, as in Spark).
        coefficients: weights over :meth:`ChurnModel.design_columns`.
        intercept: the regression's intercept.
    """

    scaler_mean: list[float]
    scaler_std: list[float]
    coefficients: list[float]
    intercept: float


@dataclass
class Tree:
    """One regression tree of the ensemble, nodes in pre-order (the root is node 0).

    Attributes:
        weight: the tree's weight in the ensemble's sum.
        feature: split column per node (index into ``[numerics..., categoricals...]``), -1 for a leaf.
        threshold: continuous split: ``x <= threshold`` goes left; None for leaves and categorical splits.
        left_categories: categorical split: the category indices that go left; None otherwise.
        left, right: child node per node (-1 for a leaf); children come after their parent.
        value: prediction of each node (a leaf's value is its output).
        cover: training rows (weight) that reached each node, for path-dependent TreeSHAP.
    """

    weight: float
    feature: list[int]
    threshold: list[float | None]
    left_categories: list[list[int] | None]
    left: list[int]
    right: list[int]
    value: list[float]
    cover: list[float]

    @property
    def n_nodes(self) -> int:
        return len(self.feature)


@dataclass
class TreeParams:
    """A boosted tree ensemble: ``logit = margin_scale * sum(tree.weight * leaf value)``.

    Attributes:
        trees: the ensemble's trees.
        margin_scale: factor between the summed margin and the log-odds (2 for Spark's GBT log loss).
    """

    trees: list[Tree]
    margin_scale: float = 2.0


# --- the model ------------------------------------------------------------------------------------------
@dataclass
class ChurnModel:
    """A churn model: shared preprocessing plus either a logistic regression or a tree ensemble.

    Attributes:
        numeric_features: numeric input columns, in the model's order.
        categorical_features: categorical input columns (strings; null or unseen -> the "unknown" index).
        impute_values: value a missing numeric (null or NaN) takes, per numeric feature (the training
            median for the regression; a value below the training minimum for trees, so that "missing"
            stays a separate branch).
        categories: the indexer's labels per categorical feature, in index order.
        linear: parameters of the logistic regression (family ``logistic_regression``).
        trees: parameters of the tree ensemble (family ``gbt``).
        numeric_ranges: observed ``[min, max]`` in the training data, for forms and sanity checks.
        numeric_defaults: a typical value per numeric (training median), the default of forms.
        metadata: free-form facts about training (as_of, data_version, params, ...).
    """

    numeric_features: list[str]
    categorical_features: list[str]
    impute_values: dict[str, float]
    categories: dict[str, list[str]]
    linear: LinearParams | None = None
    trees: TreeParams | None = None
    numeric_ranges: dict[str, list[float]] = field(default_factory=dict)
    numeric_defaults: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_model(self)
        self._prepare()

    # --- layout ---------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """``logistic_regression`` or ``gbt``."""
        return LOGISTIC_REGRESSION if self.linear is not None else GBT

    @property
    def feature_names(self) -> list[str]:
        """The input columns the model reads, numerics first."""
        return [*self.numeric_features, *self.categorical_features]

    def design_columns(self) -> list[tuple[str, str]]:
        """``(feature, level)`` per column of the regression's design matrix (level "" for numerics)."""
        cols = [(c, "") for c in self.numeric_features]
        for c in self.categorical_features:
            cols += [(c, label) for label in self.categories[c]] + [(c, UNKNOWN_LEVEL)]
        return cols

    def _prepare(self) -> None:
        """Arrays used on every call (kept out of the dataclass fields and of the JSON)."""
        self._impute = np.array([self.impute_values[c] for c in self.numeric_features], dtype=np.float64)
        self._lookups = [pd.Index(self.categories[c], dtype=object) for c in self.categorical_features]
        self._label_index = [{label: i for i, label in enumerate(self.categories[c])}
                             for c in self.categorical_features]
        if self.linear is not None:
            self._prepare_linear(self.linear)
        else:
            self._prepare_trees(self.trees)

    def _prepare_linear(self, lin: LinearParams) -> None:
        n_num = len(self.numeric_features)
        coef = np.asarray(lin.coefficients, dtype=np.float64)
        self._mean = np.asarray(lin.scaler_mean, dtype=np.float64)
        std = np.asarray(lin.scaler_std, dtype=np.float64)
        # Spark's StandardScaler multiplies by 1/std and maps a zero std to a zero factor
        with np.errstate(divide="ignore"):
            self._scale = np.where(std == 0.0, 0.0, 1.0 / std)
        self._w_num = coef[:n_num]
        self._w_cat = []
        offset = n_num
        for c in self.categorical_features:
            size = len(self.categories[c]) + 1
            self._w_cat.append(coef[offset : offset + size])
            offset += size

    def _prepare_trees(self, params: TreeParams) -> None:
        """Flatten every tree into global node arrays in which the two children of a node are adjacent.

        A row at node ``n`` moves to ``child[n] + right`` where ``right`` is ``x[feature[n]] > threshold[n]``
        for a continuous split and ``cat_right[n, x[feature[n]]]`` for a categorical one; a leaf is its own
        child.
        """
        n_num = len(self.numeric_features)
        sizes = [len(self.categories[c]) + 1 for c in self.categorical_features]
        width = max(sizes, default=1)
        feats: list[int] = []
        thrs: list[float] = []
        childs: list[int] = []
        vals: list[float] = []
        cat_rows: dict[int, list[int]] = {}  # node slot -> category indices that go left
        roots: list[int] = []
        for tree in params.trees:
            slot = {0: len(feats)}
            queue = [0]
            roots.append(slot[0])
            feats.append(0), thrs.append(np.inf), childs.append(slot[0]), vals.append(0.0)
            while queue:  # breadth first; a node's children get two consecutive slots
                node = queue.pop(0)
                at = slot[node]
                vals[at] = float(tree.weight) * float(tree.value[node])
                f = tree.feature[node]
                if f < 0:
                    continue
                slot[tree.left[node]], slot[tree.right[node]] = len(feats), len(feats) + 1
                childs[at] = len(feats)
                for child in (tree.left[node], tree.right[node]):
                    feats.append(0), thrs.append(np.inf), childs.append(slot[child]), vals.append(0.0)
                    queue.append(child)
                feats[at] = f
                if tree.left_categories[node] is not None:
                    cat_rows[at] = list(tree.left_categories[node])
                else:
                    thrs[at] = float(tree.threshold[node])
        self._t_feature = np.asarray(feats, dtype=np.intp)
        self._t_threshold = np.asarray(thrs, dtype=np.float64)
        self._t_child = np.asarray(childs, dtype=np.intp)
        self._t_value = np.asarray(vals, dtype=np.float64)
        self._t_roots = np.asarray(roots, dtype=np.intp)
        self._t_scale = float(params.margin_scale)
        self._t_is_cat = np.zeros(len(feats), dtype=np.bool_)
        self._t_cat_right = np.zeros((len(feats), width), dtype=np.bool_)
        for at, left in cat_rows.items():
            self._t_is_cat[at] = True
            self._t_cat_right[at, : sizes[feats[at] - n_num]] = True
            self._t_cat_right[at, left] = False

    # --- preprocessing ----------------------------------------------------------------------------------
    def _check_columns(self, df: Inputs) -> None:
        present = df.columns if isinstance(df, pd.DataFrame) else df
        missing = [c for c in self.feature_names if c not in present]
        if missing:
            raise ValueError(f"input lacks the model's feature columns: {missing}")

    def numeric_matrix(self, df: Inputs) -> np.ndarray:
        """Numerics as float64 with missing values imputed, shape (rows, numerics)."""
        if not self.numeric_features:
            return np.zeros((_rows(df), 0))
        if isinstance(df, pd.DataFrame):
            numeric = df[self.numeric_features]
        else:  # a mapping of columns: one 2-D array, no frame (the per-request path of the scoring API)
            try:
                raw = np.column_stack([np.asarray(df[c], dtype=np.float64) for c in self.numeric_features])
                return np.asfortranarray(np.where(np.isnan(raw), self._impute, raw))
            except (TypeError, ValueError):
                numeric = pd.DataFrame({c: np.asarray(df[c]) for c in self.numeric_features})
        try:  # the usual case, numeric columns: one conversion, no per-column pandas work
            raw = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):  # text from forms or CSVs: coerce, unparsable -> missing
            raw = numeric.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        # one memory layout whatever the input: BLAS's matrix-vector product rounds differently per layout, and
        # the same rows must score to the same bits from a frame or from columns. Column-major, pandas' usual
        # layout, because its product adds column after column: inf - inf stays NaN (a degenerate fit's
        # overflow shows), where the row-major kernel returned -inf, a confident 0.0
        return np.asfortranarray(np.where(np.isnan(raw), self._impute, raw))

    def category_indices(self, df: Inputs) -> list[np.ndarray]:
        """Indexer output per categorical feature (unknown and null -> ``len(labels)``)."""
        out = []
        rows = _rows(df)
        for col, lookup, by_label in zip(self.categorical_features, self._lookups, self._label_index, strict=True):
            values = df[col].to_numpy(dtype=object) if isinstance(df, pd.DataFrame) else np.asarray(df[col], dtype=object)
            if rows <= DICT_LOOKUP_MAX_ROWS:  # the same answer as below, for a few rows without pandas
                unknown = len(by_label)
                out.append(np.array([by_label.get(_as_label(v), unknown) for v in values], dtype=np.intp))
                continue
            idx = lookup.get_indexer(values).astype(np.intp)
            missed = np.flatnonzero(idx < 0)
            if len(missed):
                # misses are nulls, unseen labels or non-strings (e.g. 5 for "5"): look up their labels
                second = np.full(len(missed), -1, dtype=np.intp)
                known = ~pd.isna(values[missed])
                if known.any():
                    labels = np.array([_as_label(v) for v in values[missed][known]] + [None], dtype=object)[:-1]
                    second[known] = lookup.get_indexer(labels)
                idx[missed] = np.where(second < 0, len(lookup), second)
            out.append(idx)
        return out

    def tree_input(self, df: Inputs) -> np.ndarray:
        """The vector the trees read: ``[imputed numerics..., category indices...]``, shape (rows, features)."""
        self._check_columns(df)
        cats = self.category_indices(df)
        return np.column_stack([self.numeric_matrix(df), *[c.astype(np.float64) for c in cats]]) \
            if cats else self.numeric_matrix(df)

    def transform(self, df: Inputs) -> np.ndarray:
        """The regression's dense design matrix, columns as in :meth:`design_columns`."""
        if self.linear is None:
            raise ValueError("transform() is the logistic regression's design matrix; this model is a tree ensemble")
        self._check_columns(df)
        blocks = [(self.numeric_matrix(df) - self._mean) * self._scale]
        for c, idx in zip(self.categorical_features, self.category_indices(df), strict=True):
            onehot = np.zeros((len(idx), len(self.categories[c]) + 1))
            onehot[np.arange(len(idx)), idx] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks)

    # --- scoring --------------------------------------------------------------------------------------
    def decision_function(self, df: Inputs) -> np.ndarray:
        """The logit (log-odds of >= 1 payment in the next 60 days) per row of ``df`` (a frame, or a mapping
        of column name -> 1-D array)."""
        self._check_columns(df)
        if self.linear is not None:
            margin = ((self.numeric_matrix(df) - self._mean) * self._scale) @ self._w_num + self.linear.intercept
            for weights, idx in zip(self._w_cat, self.category_indices(df), strict=True):
                margin = margin + weights[idx]
            return margin
        return self._t_scale * self.tree_margin(self.tree_input(df))

    def predict_proba(self, df: Inputs) -> np.ndarray:
        """Probability of at least one payment in the next 60 days, one float per row of ``df``."""
        # the same expression as Spark's models, for bit-level parity
        return 1.0 / (1.0 + np.exp(-self.decision_function(df)))

    def tree_margin(self, x: np.ndarray) -> np.ndarray:
        """``sum(weight * leaf value)`` over the trees for tree inputs ``x`` (Spark's GBT margin).

        The traversal is a numba kernel (compiled on the first call in a process): a Python loop
        over rows and trees is too slow, and numpy's lock-step traversal moves (rows x trees) arrays
        through memory a dozen times per level.
        """
        if self.trees is None:
            raise ValueError("tree_margin() needs a tree ensemble")
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"tree input must have shape (rows, {len(self.feature_names)}), got {x.shape}")
        return _tree_kernels()["margin"](x, self._t_roots, self._t_feature, self._t_threshold, self._t_child,
                                         self._t_value, self._t_is_cat, self._t_cat_right)

    # --- description ----------------------------------------------------------------------------------
    def input_schema(self) -> dict[str, dict[str, Any]]:
        """Per feature: ``type`` ("numeric"/"categorical"), observed ``min``/``max`` or ``categories``."""
        schema: dict[str, dict[str, Any]] = {}
        for c in self.numeric_features:
            lo, hi = self.numeric_ranges.get(c, [None, None])
            schema[c] = {"type": "numeric", "min": lo, "max": hi, "default": self._default(c)}
        for c in self.categorical_features:
            labels = self.categories[c]
            schema[c] = {"type": "categorical", "categories": list(labels), "default": labels[0] if labels else None}
        return schema

    def _default(self, feature: str) -> float:
        return float(self.numeric_defaults.get(feature, self.impute_values[feature]))

    def example_frame(self, rows: int = 1) -> pd.DataFrame:
        """A plausible input (typical numerics and most frequent categories), e.g. for signatures and forms."""
        data: dict[str, list] = {c: [self._default(c)] * rows for c in self.numeric_features}
        for c in self.categorical_features:
            labels = self.categories[c]
            data[c] = [labels[0] if labels else None] * rows
        return pd.DataFrame(data, columns=self.feature_names)

    # --- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready data (``format_version`` 2)."""
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "numeric_features": list(self.numeric_features),
            "categorical_features": list(self.categorical_features),
            "impute_values": dict(self.impute_values),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "linear": None if self.linear is None else vars(self.linear).copy(),
            "trees": None if self.trees is None else {
                "margin_scale": self.trees.margin_scale, "trees": [vars(t).copy() for t in self.trees.trees]},
            "numeric_ranges": dict(self.numeric_ranges),
            "numeric_defaults": dict(self.numeric_defaults),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ChurnModel:
        """Build a model from :meth:`to_dict` data, checking every field (also reads format 1 models).

        Raises:
            ModelFormatError: naming the field that is missing, mistyped or inconsistent.
        """
        if not isinstance(data, dict):
            raise ModelFormatError(f"a churn model is a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version == 1:
            data = _from_format_1(data)
        elif version != FORMAT_VERSION:
            raise ModelFormatError(f"churn model format {version!r} is not supported (expected 1 or {FORMAT_VERSION})")
        allowed = {"format_version", "family", "numeric_features", "categorical_features", "impute_values",
                   "categories", "linear", "trees", "numeric_ranges", "numeric_defaults", "metadata"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ModelFormatError(f"unknown fields in the churn model: {unknown}")
        family = data.get("family")
        if family not in FAMILIES:
            raise ModelFormatError(f"family {family!r} is not one of {FAMILIES}")
        linear = data.get("linear")
        trees = data.get("trees")
        if (family == LOGISTIC_REGRESSION) != (linear is not None) or (family == GBT) != (trees is not None):
            raise ModelFormatError(f"family {family!r} needs exactly its own parameters ('linear' or 'trees')")
        try:
            return cls(
                numeric_features=_str_list(data, "numeric_features"),
                categorical_features=_str_list(data, "categorical_features"),
                impute_values=_float_map(data, "impute_values"),
                categories={str(k): _str_list(data["categories"], k) for k in _mapping(data, "categories")},
                linear=None if linear is None else _linear_from(linear),
                trees=None if trees is None else _trees_from(trees),
                numeric_ranges={str(k): [_number(v[0], f"numeric_ranges.{k}"), _number(v[1], f"numeric_ranges.{k}")]
                                for k, v in _mapping(data, "numeric_ranges", {}).items()},
                numeric_defaults=_float_map(data, "numeric_defaults", {}),
                metadata=dict(_mapping(data, "metadata", {})),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ModelFormatError(f"malformed churn model: {type(exc).__name__}: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (floats round-trip exactly through ``repr``)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ChurnModel:
        """Read a model written by :meth:`save` (plain JSON: nothing in the file is executed)."""
        try:
            data = json.loads(Path(path).read_text(), parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise ModelFormatError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)


# --- compiled tree traversal -------------------------------------------------------------------------------
_KERNELS: dict[str, Any] = {}


def _tree_kernels() -> dict[str, Any]:
    """The numba kernels of tree scoring, compiled once per process (numba is imported only for trees)."""
    if not _KERNELS:
        import numba

        @numba.njit(nogil=True, cache=False)
        def margin(x, roots, feature, threshold, child, value, is_cat, cat_right):  # pragma: no cover - compiled
            out = np.zeros(x.shape[0])
            last = cat_right.shape[1] - 1
            for i in range(x.shape[0]):
                total = 0.0
                for t in range(roots.shape[0]):  # in tree order, like Spark's sum over the trees
                    node = roots[t]
                    while child[node] != node:
                        v = x[i, feature[node]]
                        if is_cat[node]:
                            right = cat_right[node, min(max(int(v), 0), last)]
                        else:
                            right = v > threshold[node]  # inputs are imputed: never NaN
                        node = child[node] + (1 if right else 0)
                    total += value[node]
                out[i] = total
            return out

        _KERNELS["margin"] = margin
    return _KERNELS


# --- validation of stored models --------------------------------------------------------------------------
def _refuse_constant(name: str) -> float:
    raise ModelFormatError(f"the model file holds {name}, which no valid model has")


def _mapping(data: dict, key: str, default: Any = None) -> dict:
    value = data.get(key, default)
    if not isinstance(value, dict):
        raise ModelFormatError(f"'{key}' must be an object, got {type(value).__name__}")
    return value


def _str_list(data: dict, key: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelFormatError(f"'{key}' must be a list of strings")
    return list(value)


def _number(value: Any, where: str, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelFormatError(f"'{where}' must be a number, got {value!r}")
    if finite and not math.isfinite(value):
        raise ModelFormatError(f"'{where}' must be finite, got {value!r}")
    return float(value)


def _float_map(data: dict, key: str, default: Any = None) -> dict[str, float]:
    return {str(k): _number(v, f"{key}.{k}") for k, v in _mapping(data, key, default).items()}


def _float_list(data: dict, key: str, where: str) -> list[float]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ModelFormatError(f"'{where}.{key}' must be a list")
    return [_number(v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]


def _int_list(data: dict, key: str, where: str) -> list[int]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ModelFormatError(f"'{where}.{key}' must be a list of integers")
    return list(value)


def _linear_from(data: Any) -> LinearParams:
    if not isinstance(data, dict) or set(data) != {"scaler_mean", "scaler_std", "coefficients", "intercept"}:
        raise ModelFormatError("'linear' must hold exactly scaler_mean, scaler_std, coefficients, intercept")
    return LinearParams(
        scaler_mean=_float_list(data, "scaler_mean", "linear"),
        scaler_std=_float_list(data, "scaler_std", "linear"),
        coefficients=_float_list(data, "coefficients", "linear"),
        intercept=_number(data["intercept"], "linear.intercept", finite=False),
    )


def _trees_from(data: Any) -> TreeParams:
    if not isinstance(data, dict) or not isinstance(data.get("trees"), list):
        raise ModelFormatError("'trees' must be an object with a list 'trees'")
    out = []
    for i, t in enumerate(data["trees"]):
        where = f"trees[{i}]"
        fields = {"weight", "feature", "threshold", "left_categories", "left", "right", "value", "cover"}
        if not isinstance(t, dict) or set(t) != fields:
            raise ModelFormatError(f"'{where}' must hold exactly {sorted(fields)}")
        thresholds = t["threshold"]
        cats = t["left_categories"]
        if not isinstance(thresholds, list) or not isinstance(cats, list):
            raise ModelFormatError(f"'{where}.threshold' and '.left_categories' must be lists")
        out.append(Tree(
            weight=_number(t["weight"], f"{where}.weight"),
            feature=_int_list(t, "feature", where),
            threshold=[None if v is None else _number(v, f"{where}.threshold[{j}]") for j, v in enumerate(thresholds)],
            left_categories=[None if v is None else _int_list({"c": v}, "c", f"{where}.left_categories[{j}]")
                             for j, v in enumerate(cats)],
            left=_int_list(t, "left", where),
            right=_int_list(t, "right", where),
            value=_float_list(t, "value", where),
            cover=_float_list(t, "cover", where),
        ))
    return TreeParams(trees=out, margin_scale=_number(data.get("margin_scale", 2.0), "trees.margin_scale"))


def _check_model(model: ChurnModel) -> None:
    """Every size, index and reference of ``model`` is consistent; raise :class:`ModelFormatError` if not."""
    names = model.feature_names
    if len(set(names)) != len(names):
        raise ModelFormatError(f"feature names repeat: {names}")
    missing = [c for c in model.numeric_features if c not in model.impute_values]
    if missing:
        raise ModelFormatError(f"impute_values lacks {missing}")
    missing = [c for c in model.categorical_features if c not in model.categories]
    if missing:
        raise ModelFormatError(f"categories lacks {missing}")
    if (model.linear is None) == (model.trees is None):
        raise ModelFormatError("a churn model has exactly one of 'linear' and 'trees'")
    n_num = len(model.numeric_features)
    if model.linear is not None:
        lin = model.linear
        if len(lin.scaler_mean) != n_num or len(lin.scaler_std) != n_num:
            raise ModelFormatError(f"scaler sizes {len(lin.scaler_mean)}/{len(lin.scaler_std)} != {n_num} numerics")
        expected = n_num + sum(len(model.categories[c]) + 1 for c in model.categorical_features)
        if len(lin.coefficients) != expected:
            raise ModelFormatError(f"ChurnModel has {len(lin.coefficients)} coefficients, its layout needs {expected}")
        return
    if not model.trees.trees:
        raise ModelFormatError("the tree ensemble has no tree")
    for i, tree in enumerate(model.trees.trees):
        _check_tree(tree, f"trees[{i}]", n_num, [len(model.categories[c]) + 1 for c in model.categorical_features])


def _check_tree(tree: Tree, where: str, n_num: int, category_sizes: list[int]) -> None:
    n = tree.n_nodes
    sizes = {k: len(getattr(tree, k)) for k in ("threshold", "left_categories", "left", "right", "value", "cover")}
    if n == 0 or any(s != n for s in sizes.values()):
        raise ModelFormatError(f"{where}: node arrays must be non-empty and of one length, got {n} and {sizes}")
    n_features = n_num + len(category_sizes)
    for node in range(n):
        f = tree.feature[node]
        left, right = tree.left[node], tree.right[node]
        if f < 0:
            if f != -1 or left != -1 or right != -1 or tree.threshold[node] is not None \
                    or tree.left_categories[node] is not None:
                raise ModelFormatError(f"{where}: leaf {node} must have feature -1, no children and no split")
            continue
        if f >= n_features:
            raise ModelFormatError(f"{where}: node {node} splits on column {f}, the model has {n_features}")
        # children strictly after their parent: no cycle, and a traversal always ends
        if not (node < left < n and node < right < n and left != right):
            raise ModelFormatError(f"{where}: node {node} has children {left}, {right} (must follow it, within {n})")
        if f < n_num:
            if tree.threshold[node] is None or tree.left_categories[node] is not None:
                raise ModelFormatError(f"{where}: node {node} splits numeric column {f}: needs a threshold only")
        else:
            cats = tree.left_categories[node]
            size = category_sizes[f - n_num]
            if cats is None or tree.threshold[node] is not None or not all(0 <= c < size for c in cats):
                raise ModelFormatError(f"{where}: node {node} splits categorical column {f}: needs category "
                                       f"indices in [0, {size}) only")
        if tree.cover[node] <= 0:
            raise ModelFormatError(f"{where}: node {node} has cover {tree.cover[node]} (must be > 0)")
    if _depth(tree) > MAX_TREE_DEPTH:
        raise ModelFormatError(f"{where}: deeper than {MAX_TREE_DEPTH}")
    reached = _breadth_first(tree)
    if len(reached) != n or len(set(reached)) != n:
        raise ModelFormatError(f"{where}: every node must be reached exactly once from the root")


def _breadth_first(tree: Tree) -> list[int]:
    order, queue = [], [0]
    while queue:
        node = queue.pop(0)
        order.append(node)
        if tree.feature[node] >= 0:
            queue += [tree.left[node], tree.right[node]]
    return order


def _depth(tree: Tree) -> int:
    depth = {0: 0}
    for node in _breadth_first(tree):
        if tree.feature[node] >= 0:
            depth[tree.left[node]] = depth[tree.right[node]] = depth[node] + 1
    return max(depth.values())


def _from_format_1(data: dict) -> dict:
    """A format-1 model (logistic regression with flat fields) in format 2."""
    data = dict(data)
    linear = {k: data.pop(k, None) for k in ("scaler_mean", "scaler_std", "coefficients", "intercept")}
    data.update(format_version=FORMAT_VERSION, family=LOGISTIC_REGRESSION, linear=linear, trees=None)
    return data


def _rows(df: Inputs) -> int:
    """Rows of a frame or of a mapping of equally long columns."""
    if isinstance(df, pd.DataFrame):
        return len(df)
    return len(np.asarray(next(iter(df.values())))) if len(df) else 0


def _as_label(value: Any) -> Any:
    """The indexer's view of a cell: strings as they are, missing -> None, anything else its str()."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)
