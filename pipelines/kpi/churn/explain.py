"""SHAP explanations of the churn model, exact for both families, in log-odds.

- Logistic regression over the transformed design matrix ``z(x)`` (standardised numerics, one-hot
  categoricals): with independent (interventional) features the SHAP value of design column j is
  ``w_j * (z_j(x) - E_bg[z_j])``; a categorical feature's value is the sum over its one-hot columns, so
  ``base + sum(contributions) == logit(p)`` exactly, with ``base = b + w . E_bg[z]``. The default
  background is the training mean of ``z`` stored with the model.
- Gradient-boosted trees: path-dependent TreeSHAP (Lundberg et al. 2020) on the exported trees, exact
  Shapley values of ``E[f(x) | x_S]`` estimated with each node's training cover. Every split reads one
  original feature (a numeric value or a category index), so the values are per original feature
  without any summing. ``base`` is the cover-weighted mean of the logit. The computation is written per
  leaf path (the formulation of GPUTreeShap): for a path whose distinct features have zero fractions
  ``z_i`` (share of the training rows that follow the path at that feature's nodes) and one fractions
  ``o_i`` (1 when the row follows the path there), feature j receives
  ``v * (o_j - z_j) * sum_s s!(k-1-s)!/k! * [t^s] prod_{i != j} (z_i + o_i t)`` (the product divided
  by the factor of j, which is what TreeSHAP's "unwind" does), in a numba kernel over rows and paths.

The global artifacts use ``shap.LinearExplainer`` for the regression and this TreeSHAP for trees; the
tests check both against the shap library (``shap.TreeExplainer`` on the same trees) to 1e-9.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kpi.churn.model import ChurnModel, Inputs, Tree

SUMMARY_PLOT = "shap/summary.png"
MEAN_ABS_JSON = "shap/mean_abs_shap.json"
MAX_BACKGROUND = 1000


# --- logistic regression ----------------------------------------------------------------------------------
def _grouping(model: ChurnModel) -> np.ndarray:
    """Matrix (design columns x features) that sums one-hot columns back into their feature (built once per
    model: it is the same for every call)."""
    cached = getattr(model, "_shap_grouping", None)
    if cached is not None:
        return cached
    position = {name: i for i, name in enumerate(model.feature_names)}
    columns = model.design_columns()
    groups = np.zeros((len(columns), len(position)))
    for j, (feature, _) in enumerate(columns):
        groups[j, position[feature]] = 1.0
    model._shap_grouping = groups
    return groups


def background_mean(model: ChurnModel, background: pd.DataFrame | None = None) -> np.ndarray:
    """E[z] over the background rows; by default the training mean stored with the model (regression only)."""
    if background is not None:
        return model.transform(background).mean(axis=0)
    stored = model.metadata.get("design_mean")
    if stored is None:
        raise ValueError("the model carries no background mean; pass background rows")
    return np.asarray(stored, dtype=np.float64)


def _linear_shap(model: ChurnModel, df: Inputs, background: pd.DataFrame | None) -> tuple[float, np.ndarray]:
    w = np.asarray(model.linear.coefficients)
    mean = background_mean(model, background)
    per_column = (model.transform(df) - mean) * w
    return float(model.linear.intercept + mean @ w), per_column @ _grouping(model)


# --- trees: path-dependent TreeSHAP ------------------------------------------------------------------------
@dataclass
class _TreePaths:
    """The ensemble's leaf paths and internal nodes as padded arrays, prepared once per model.

    ``P`` paths (one per leaf), at most ``K`` distinct features per path, at most ``M`` nodes of one
    feature on a path; padding is -1.
    """

    base: float
    node_feature: np.ndarray  # (internal nodes,) column of the tree input
    node_threshold: np.ndarray  # (internal nodes,) +inf for categorical splits
    node_is_cat: np.ndarray  # (internal nodes,) bool
    node_cat_left: np.ndarray  # (internal nodes, categories) bool: the category goes left
    path_k: np.ndarray  # (P,) distinct features on the path
    path_value: np.ndarray  # (P,) leaf value in log-odds (tree weight and margin scale applied)
    path_zero: np.ndarray  # (P, K) product of cover ratios at the feature's nodes on the path
    path_feature: np.ndarray  # (P, K) original feature index
    cond_node: np.ndarray  # (P, K, M) internal node whose decision the path needs, -1 = none
    cond_left: np.ndarray  # (P, K, M) the direction the path takes there
    weights: np.ndarray  # (K + 1, K) Shapley weights s!(k-1-s)!/k! for each k


def _leaf_paths(tree: Tree) -> list[tuple[int, list[tuple[int, bool]]]]:
    """``(leaf, [(internal node, went_left), ...])`` for every leaf, root first."""
    out, stack = [], [(0, [])]
    while stack:
        node, path = stack.pop()
        if tree.feature[node] < 0:
            out.append((node, path))
            continue
        stack.append((tree.right[node], [*path, (node, False)]))
        stack.append((tree.left[node], [*path, (node, True)]))
    return out


def _tree_paths(model: ChurnModel) -> _TreePaths:
    cached = getattr(model, "_shap_paths", None)
    if cached is not None:
        return cached
    width = max([len(model.categories[c]) + 1 for c in model.categorical_features], default=1)
    scale = model.trees.margin_scale
    node_feature, node_threshold, node_cats = [], [], []
    paths = []  # (value, [zero], [feature], [[(node, left)]])
    base = 0.0
    for tree in model.trees.trees:
        index = {}
        for node in range(tree.n_nodes):
            f = tree.feature[node]
            if f < 0:
                continue
            index[node] = len(node_feature)
            node_feature.append(f)
            cats = tree.left_categories[node]
            node_threshold.append(np.inf if cats is not None else float(tree.threshold[node]))
            node_cats.append(cats)
        for leaf, path in _leaf_paths(tree):
            value = scale * tree.weight * tree.value[leaf]
            zero: dict[int, float] = {}
            conds: dict[int, list[tuple[int, bool]]] = {}
            children = [p[0] for p in path[1:]] + [leaf] if path else []
            for (node, left), child in zip(path, children, strict=True):
                f = tree.feature[node]
                zero[f] = zero.get(f, 1.0) * tree.cover[child] / tree.cover[node]
                conds.setdefault(f, []).append((index[node], left))
            base += value * math.prod(zero.values())
            if zero:  # a stump's value is all in the base
                paths.append((value, list(zero.values()), list(zero), [conds[f] for f in zero]))
    k_max = max((len(p[1]) for p in paths), default=1)
    m_max = max((len(c) for p in paths for c in p[3]), default=1)
    n_paths = len(paths)
    out = _TreePaths(
        base=base,
        node_feature=np.asarray(node_feature, dtype=np.int64),
        node_threshold=np.asarray(node_threshold, dtype=np.float64),
        node_is_cat=np.array([c is not None for c in node_cats], dtype=np.bool_),
        node_cat_left=np.zeros((len(node_cats), width), dtype=np.bool_),
        path_k=np.array([len(p[1]) for p in paths], dtype=np.int64),
        path_value=np.array([p[0] for p in paths], dtype=np.float64),
        path_zero=np.ones((n_paths, k_max)),
        path_feature=np.full((n_paths, k_max), -1, dtype=np.int64),
        cond_node=np.full((n_paths, k_max, m_max), -1, dtype=np.int64),
        cond_left=np.zeros((n_paths, k_max, m_max), dtype=np.bool_),
        weights=np.zeros((k_max + 1, k_max)),
    )
    for i, cats in enumerate(node_cats):
        if cats is not None:
            out.node_cat_left[i, cats] = True
    for p, (_, zero, feats, conds) in enumerate(paths):
        out.path_zero[p, : len(zero)] = zero
        out.path_feature[p, : len(feats)] = feats
        for j, cs in enumerate(conds):
            for c, (node, left) in enumerate(cs):
                out.cond_node[p, j, c], out.cond_left[p, j, c] = node, left
    for k in range(1, k_max + 1):
        out.weights[k, :k] = [math.factorial(s) * math.factorial(k - 1 - s) / math.factorial(k) for s in range(k)]
    model._shap_paths = out
    return out


_KERNELS: dict[str, Any] = {}


def _shap_kernel():
    """The numba kernel of per-leaf-path TreeSHAP, compiled once per process."""
    if not _KERNELS:
        import numba

        @numba.njit(nogil=True, cache=False)
        def tree_shap(x, n_features, node_feature, node_threshold, node_is_cat, node_cat_left, path_k,
                      path_value, path_zero, path_feature, cond_node, cond_left, weights):  # pragma: no cover
            rows, n_nodes = x.shape[0], node_feature.shape[0]
            k_max, m_max = path_zero.shape[1], cond_node.shape[2]
            last = node_cat_left.shape[1] - 1
            phi = np.zeros((rows, n_features))
            left = np.zeros(n_nodes, dtype=np.bool_)
            one = np.zeros(k_max)
            poly = np.zeros(k_max + 1)
            quotient = np.zeros(k_max)
            for i in range(rows):
                for n in range(n_nodes):  # the row's direction at every split
                    v = x[i, node_feature[n]]
                    if node_is_cat[n]:
                        left[n] = node_cat_left[n, min(max(int(v), 0), last)]
                    else:
                        left[n] = v <= node_threshold[n]
                for p in range(path_k.shape[0]):
                    k = path_k[p]
                    for j in range(k):  # o_j: the row follows the path at every node of feature j
                        o = 1.0
                        for c in range(m_max):
                            node = cond_node[p, j, c]
                            if node >= 0 and left[node] != cond_left[p, j, c]:
                                o = 0.0
                        one[j] = o
                    poly[: k + 1] = 0.0  # coefficients of prod_i (z_i + o_i t), lowest power first
                    poly[0] = 1.0
                    for j in range(k):
                        z, o = path_zero[p, j], one[j]
                        for s in range(j + 1, 0, -1):
                            poly[s] = poly[s] * z + poly[s - 1] * o
                        poly[0] = poly[0] * z
                    for j in range(k):
                        z, o = path_zero[p, j], one[j]
                        if o == 1.0:  # divide by (z + t)
                            quotient[k - 1] = poly[k]
                            for s in range(k - 1, 0, -1):
                                quotient[s - 1] = poly[s] - z * quotient[s]
                        else:  # divide by z
                            for s in range(k):
                                quotient[s] = poly[s] / z
                        total = 0.0
                        for s in range(k):
                            total += quotient[s] * weights[k, s]
                        phi[i, path_feature[p, j]] += path_value[p] * (o - z) * total
            return phi

        _KERNELS["tree_shap"] = tree_shap
    return _KERNELS["tree_shap"]


def _tree_shap(model: ChurnModel, df: Inputs) -> tuple[float, np.ndarray]:
    paths = _tree_paths(model)
    x = np.ascontiguousarray(model.tree_input(df), dtype=np.float64)
    phi = _shap_kernel()(
        x, len(model.feature_names), paths.node_feature, paths.node_threshold, paths.node_is_cat,
        paths.node_cat_left, paths.path_k, paths.path_value, paths.path_zero, paths.path_feature,
        paths.cond_node, paths.cond_left, paths.weights)
    return paths.base, phi


# --- public ----------------------------------------------------------------------------------------------
def shap_values(model: ChurnModel, df: Inputs, background: pd.DataFrame | None = None
                ) -> tuple[float, np.ndarray]:
    """Exact SHAP values in log-odds per original feature: ``(base_value, array (rows, features))``.

    Columns follow ``model.feature_names``; ``base_value + values.sum(axis=1)`` equals the model's logit.

    Args:
        model: a :class:`ChurnModel` of either family.
        df: rows with the model's feature columns (more columns are ignored): a frame, or a mapping of
            column name -> 1-D array.
        background: regression only: rows that define "average" (default: the stored training mean).
            Tree SHAP is path-dependent: its average is the training distribution held in the trees.
    """
    if model.linear is not None:
        return _linear_shap(model, df, background)
    if background is not None:
        raise ValueError("tree SHAP is path-dependent (training covers): it takes no background rows")
    return _tree_shap(model, df)


def explain_row(model: ChurnModel, row_df: pd.DataFrame, background: pd.DataFrame | None = None) -> pd.DataFrame:
    """Explain one prediction: a row per feature with its value and log-odds contribution.

    Args:
        model: the champion's :class:`ChurnModel`.
        row_df: one row with the model's feature columns.
        background: regression only: rows defining "average" (default: the training mean stored with
            the model); trees explain against their training covers.

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


def library_shap_values(model: ChurnModel, df: pd.DataFrame, background: pd.DataFrame | None = None
                        ) -> tuple[float, np.ndarray]:
    """The same SHAP values from the shap library, per original feature (used by tests and global artifacts).

    Regression: ``shap.LinearExplainer`` on the design matrix over ``background``, summed per feature.
    Trees: ``shap.TreeExplainer`` (path-dependent) on the exported trees given as shap's dictionary
    model; categorical splits use shap's categorical threshold type (a bit set over 1-based categories).
    """
    import shap

    if model.linear is not None:
        if background is None:
            raise ValueError("the linear explainer needs background rows")
        z_bg = model.transform(background)
        explainer = shap.LinearExplainer(
            (np.asarray(model.linear.coefficients), model.linear.intercept),
            shap.maskers.Independent(z_bg, max_samples=len(z_bg)),
        )
        values = np.asarray(explainer.shap_values(model.transform(df)))
        return float(np.asarray(explainer.expected_value).ravel()[0]), values @ _grouping(model)

    n_num = len(model.numeric_features)
    scale = model.trees.margin_scale
    trees, categorical_nodes = [], []
    for t, tree in enumerate(model.trees.trees):
        thresholds = np.zeros(tree.n_nodes)
        for node in range(tree.n_nodes):
            if tree.left_categories[node] is not None:
                thresholds[node] = float(sum(2 ** c for c in tree.left_categories[node]))  # bit c-1 <-> category c
                categorical_nodes.append((t, node))
            elif tree.threshold[node] is not None:
                thresholds[node] = tree.threshold[node]
        trees.append({
            "children_left": np.asarray(tree.left, dtype=np.int32),
            "children_right": np.asarray(tree.right, dtype=np.int32),
            "children_default": np.asarray(tree.left, dtype=np.int32),
            "features": np.asarray([max(f, 0) for f in tree.feature], dtype=np.int32),
            "thresholds": thresholds,
            "values": (scale * tree.weight * np.asarray(tree.value)).reshape(-1, 1),
            "node_sample_weight": np.asarray(tree.cover, dtype=np.float64),
        })
    explainer = shap.TreeExplainer({"trees": trees, "base_offset": 0.0, "tree_output": "raw_value",
                                    "input_dtype": np.float64, "internal_dtype": np.float64})
    for t, node in categorical_nodes:  # the dictionary format has no field for the split type
        explainer.model.threshold_types[t, node] = 1
    x = model.tree_input(df)
    x[:, n_num:] += 1.0  # shap numbers categories from 1
    values = np.asarray(explainer.shap_values(x, check_additivity=False))
    return float(np.asarray(explainer.expected_value).ravel()[0]), values


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
    if model.linear is not None:
        bg = background.sample(n=min(MAX_BACKGROUND, len(background)), random_state=seed)
        _, values = library_shap_values(model, rows, bg)
    else:
        _, values = shap_values(model, rows)
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
    model: ChurnModel, df: pd.DataFrame, background: pd.DataFrame, run_id: str, seed: int = 42, client: Any = None
) -> dict[str, Any]:
    """Compute the global SHAP artifacts and log them under ``shap/`` on ``run_id``.

    Args:
        client: the ``MlflowClient`` of the run's store (default: one on MLflow's current tracking URI).
    """
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shap"
        mean_abs = global_explanations(model, df, background, out, seed=seed)
        (client or mlflow.MlflowClient()).log_artifacts(run_id, str(out), artifact_path="shap")
    return mean_abs
