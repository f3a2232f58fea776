"""Export a fitted churn Spark pipeline into the JVM-free :class:`kpi.churn.model.ChurnModel`.

The pipelines are built by :mod:`kpi.churn.train`; per family:

- logistic regression: ``Imputer(median) -> VectorAssembler -> StandardScaler(mean, std) ->
  StringIndexer(keep) -> OneHotEncoder(dropLast=False) -> VectorAssembler -> LogisticRegression``;
- gbt: ``StringIndexer(keep) -> VectorAssembler([numerics..., indices...]) -> GBTClassifier``, on numerics
  whose missing values were filled with the model's ``impute_values`` before the pipeline.

Every fitted statistic is read out of the ``PipelineModel`` (the trees node by node through the JVM
objects, on the driver: nothing is written to a file system that executors would need to share).
"""

from __future__ import annotations

from typing import Any

from kpi.churn.model import ChurnModel, LinearParams, Tree, TreeParams


def _stages(pipeline_model: Any) -> dict[type, Any]:
    return {type(s): s for s in pipeline_model.stages}


def _categories(pipeline_model: Any) -> tuple[list[str], dict[str, list[str]]]:
    """Categorical inputs and their labels from the pipeline's ``StringIndexerModel`` (keep mode)."""
    from pyspark.ml.feature import StringIndexerModel

    indexer = _stages(pipeline_model).get(StringIndexerModel)
    if indexer is None:
        return [], {}
    if indexer.getHandleInvalid() != "keep":
        raise ValueError("categoricals must use StringIndexer(handleInvalid='keep')")
    features = list(indexer.getInputCols())
    return features, {c: list(labels) for c, labels in zip(features, indexer.labelsArray, strict=True)}


def export_pipeline(
    pipeline_model: Any,
    numeric_ranges: dict[str, list[float]] | None = None,
    metadata: dict[str, Any] | None = None,
    impute_values: dict[str, float] | None = None,
    numeric_defaults: dict[str, float] | None = None,
) -> ChurnModel:
    """Read a fitted churn ``PipelineModel`` (either family) into a :class:`ChurnModel`.

    Args:
        pipeline_model: the fitted pipeline built by :func:`kpi.churn.train.build_pipeline`.
        numeric_ranges: observed ``[min, max]`` per numeric feature (for :meth:`ChurnModel.input_schema`).
        metadata: stored with the model.
        impute_values: for trees, the values the numerics' missing values were filled with before the
            pipeline (the regression reads its own from the ``Imputer``).
        numeric_defaults: typical value per numeric (form defaults); default: the impute values.

    Raises:
        ValueError: when the pipeline does not have one of the expected layouts.
    """
    from pyspark.ml.classification import GBTClassificationModel, LogisticRegressionModel

    stages = _stages(pipeline_model)
    if LogisticRegressionModel in stages:
        model = _export_linear(pipeline_model, numeric_ranges, metadata)
        if numeric_defaults:
            model.numeric_defaults = dict(numeric_defaults)
        return model
    if GBTClassificationModel in stages:
        if impute_values is None:
            raise ValueError("a tree pipeline needs the impute values its numerics were filled with")
        return _export_trees(pipeline_model, impute_values, numeric_ranges, metadata, numeric_defaults)
    raise ValueError("not a churn pipeline: expected a LogisticRegressionModel or a GBTClassificationModel")


# --- logistic regression --------------------------------------------------------------------------------
def _export_linear(pipeline_model, numeric_ranges, metadata) -> ChurnModel:
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.feature import ImputerModel, OneHotEncoderModel, StandardScalerModel, VectorAssembler

    stages = _stages(pipeline_model)
    assemblers = [s for s in pipeline_model.stages if isinstance(s, VectorAssembler)]
    lr = stages[LogisticRegressionModel]
    imputer = stages.get(ImputerModel)
    scaler = stages.get(StandardScalerModel)
    if len(assemblers) != 2 or imputer is None or scaler is None:
        raise ValueError("not a churn regression pipeline: expected Imputer, StandardScaler and two VectorAssemblers")
    numeric_assembler, final_assembler = assemblers
    row = imputer.surrogateDF.collect()[0].asDict()
    imputed_to_raw = dict(zip(imputer.getOutputCols(), imputer.getInputCols(), strict=True))
    numeric_features = [imputed_to_raw[c] for c in numeric_assembler.getInputCols()]
    impute_values = {c: float(row[c]) for c in numeric_features}
    if not scaler.getWithMean() or not scaler.getWithStd():
        raise ValueError("the churn pipeline's StandardScaler must use withMean and withStd")

    categorical_features, categories = _categories(pipeline_model)
    encoder = stages.get(OneHotEncoderModel)
    if categorical_features:
        if encoder is None or encoder.getDropLast():
            raise ValueError("categoricals must be one-hot encoded with OneHotEncoder(dropLast=False)")
        sizes = list(encoder.categorySizes)
        if sizes != [len(categories[c]) + 1 for c in categorical_features]:
            raise ValueError(f"one-hot sizes {sizes} do not match indexer labels + unknown slot")
    order = [scaler.getOutputCol(), *(encoder.getOutputCols() if categorical_features else [])]
    if list(final_assembler.getInputCols()) != order:
        raise ValueError("final assembler inputs are not [scaled numerics, one-hot blocks in indexer order]")

    return ChurnModel(
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        impute_values=impute_values,
        categories=categories,
        linear=LinearParams(
            scaler_mean=scaler.mean.toArray().tolist(),
            scaler_std=scaler.std.toArray().tolist(),
            coefficients=lr.coefficients.toArray().tolist(),
            intercept=float(lr.intercept),
        ),
        numeric_ranges={k: [float(v[0]), float(v[1])] for k, v in (numeric_ranges or {}).items()},
        numeric_defaults=dict(impute_values),
        metadata=dict(metadata or {}),
    )


# --- gradient-boosted trees ------------------------------------------------------------------------------
def _export_trees(pipeline_model, impute_values, numeric_ranges, metadata, numeric_defaults) -> ChurnModel:
    from pyspark.ml.classification import GBTClassificationModel
    from pyspark.ml.feature import VectorAssembler

    stages = _stages(pipeline_model)
    gbt = stages[GBTClassificationModel]
    assemblers = [s for s in pipeline_model.stages if isinstance(s, VectorAssembler)]
    if len(assemblers) != 1:
        raise ValueError("not a churn tree pipeline: expected one VectorAssembler")
    categorical_features, categories = _categories(pipeline_model)
    inputs = list(assemblers[0].getInputCols())
    n_num = len(inputs) - len(categorical_features)
    numeric_features = inputs[:n_num]
    from pyspark.ml.feature import StringIndexerModel

    indexer = stages.get(StringIndexerModel)
    indexed = list(indexer.getOutputCols()) if indexer is not None else []
    if inputs[n_num:] != indexed:
        raise ValueError(f"tree assembler inputs {inputs} are not [numerics..., indexer outputs {indexed}]")
    missing = [c for c in numeric_features if c not in impute_values]
    if missing:
        raise ValueError(f"no impute value for numerics {missing}")
    trees = [_read_tree(t._call_java("rootNode"), w) for t, w in zip(gbt.trees, gbt.treeWeights, strict=True)]
    return ChurnModel(
        numeric_features=numeric_features,
        categorical_features=categorical_features,
        impute_values={c: float(impute_values[c]) for c in numeric_features},
        categories=categories,
        trees=TreeParams(trees=trees, margin_scale=2.0),
        numeric_ranges={k: [float(v[0]), float(v[1])] for k, v in (numeric_ranges or {}).items()},
        numeric_defaults={k: float(v) for k, v in (numeric_defaults or {}).items()},
        metadata=dict(metadata or {}),
    )


def _read_tree(root: Any, weight: float) -> Tree:
    """One Spark ``Node`` hierarchy in pre-order (children after their parent), through py4j."""
    tree = Tree(weight=float(weight), feature=[], threshold=[], left_categories=[], left=[], right=[],
                value=[], cover=[])

    def add(node: Any) -> int:
        at = len(tree.feature)
        tree.value.append(float(node.prediction()))
        # the regression tree's variance statistics start with the (weighted) count of its rows
        tree.cover.append(float(node.impurityStats().stats()[0]))
        for name in ("feature", "threshold", "left_categories", "left", "right"):
            getattr(tree, name).append(None)
        if node.getClass().getSimpleName() == "LeafNode":
            tree.feature[at], tree.left[at], tree.right[at] = -1, -1, -1
            return at
        split = node.split()
        tree.feature[at] = int(split.featureIndex())
        if split.getClass().getSimpleName() == "ContinuousSplit":
            tree.threshold[at] = float(split.threshold())
        else:
            tree.left_categories[at] = sorted(int(c) for c in split.leftCategories())
        tree.left[at] = add(node.leftChild())
        tree.right[at] = add(node.rightChild())
        return at

    add(root)
    return tree
