"""Promotion with MLflow aliases on a real sqlite store: first model, better, worse, broken and incomparable
candidates, honest reason codes, and the compare-and-set of the alias under concurrent promotions.

Candidates are real registered versions of real ChurnModels evaluated on the holdout of the session's
training run: the trained model itself (whatever family the search chose), weaker logistic regressions
fitted on one feature of that holdout, and broken ones.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODEL = "churn-registry-test"


@pytest.fixture(scope="module")
def setup(trained, tmp_path_factory):
    """Settings for a separate registered model in the same store, the trained model and its holdout."""
    from kpi.churn.mlflow_utils import download_run_artifact, load_version_model

    tmp = tmp_path_factory.mktemp("registry")
    holdout_file = download_run_artifact(
        trained.settings, trained.result["run_id"], "holdout/holdout.parquet", tmp
    )
    settings = trained.settings.model_copy(update={"churn_model_name": MODEL})
    return settings, load_version_model(trained.settings, 1), holdout_file


def fresh(settings, name: str, **update):
    """The same store under another registered model name (each test starts without a champion)."""
    return settings.model_copy(update={"churn_model_name": name, **update})


def register(settings, model, holdout_file: Path, parity: float = 1e-16) -> int:
    """Log ``model`` in a new run that carries the holdout and a parity figure; return the new version."""
    import mlflow
    from kpi.churn.mlflow_utils import experiment_id, log_and_register, using_store

    with (
        using_store(settings),
        mlflow.start_run(experiment_id=experiment_id("churn-registry-test", settings)),
    ):
        mlflow.log_artifact(str(holdout_file), artifact_path="holdout")
        mlflow.log_metric("parity_max_abs_diff", parity)
        version = log_and_register(settings, model, model.example_frame(3), tags={"purpose": "test"})
    return int(version.version)


def one_feature_model(holdout: pd.DataFrame, feature: str, name: str | None = None):
    """A calibrated logistic regression on a single numeric feature of the holdout (fitted on it)."""
    from kpi.churn.model import ChurnModel, LinearParams
    from sklearn.linear_model import LogisticRegression

    x = pd.to_numeric(holdout[feature], errors="coerce")
    median = float(x.median())
    x = x.fillna(median).to_numpy()
    mean, std = float(x.mean()), float(x.std()) or 1.0
    fitted = LogisticRegression(C=1e6).fit(((x - mean) / std).reshape(-1, 1), holdout["label"].astype(int))
    column = name or feature
    return ChurnModel(
        numeric_features=[column], categorical_features=[], impute_values={column: median}, categories={},
        linear=LinearParams([mean], [std], [float(fitted.coef_[0, 0])], float(fitted.intercept_[0])),
    )


def nan_scoring_model(holdout: pd.DataFrame):
    """A valid model file whose scores overflow to NaN (inf - inf) for users with two payments or more.

    Stored parameters must be finite numbers, so NaN scores come from arithmetic, as they would from a
    degenerate fit.
    """
    from kpi.churn.model import ChurnModel, LinearParams

    features = ["pay_count_30d", "pay_count_60d"]
    model = ChurnModel(
        numeric_features=features, categorical_features=[], impute_values={f: 0.0 for f in features},
        categories={}, linear=LinearParams([0.0, 0.0], [1.0, 1.0], [1e308, -1e308], 0.0),
    )
    assert np.isnan(model.predict_proba(holdout)).any()
    return model


def weakened_model(model, holdout: pd.DataFrame):
    """A calibrated but clearly weaker model: the best single feature whose AUC is >= 0.03 below the model's."""
    from sklearn.metrics import roc_auc_score

    y = holdout["label"].astype(int).to_numpy()
    target = roc_auc_score(y, model.predict_proba(holdout)) - 0.03
    candidates = []
    for feature in model.numeric_features:
        weak = one_feature_model(holdout, feature)
        auc = roc_auc_score(y, weak.predict_proba(holdout))
        if 0.65 <= auc <= target:
            candidates.append((auc, weak))
    assert candidates, "no single feature gives a weaker, still useful model"
    return max(candidates, key=lambda c: c[0])[1]


def version_tags(settings, version: int) -> dict[str, str]:
    from kpi.churn.mlflow_utils import client

    return client(settings).get_model_version(settings.churn_model_name, str(version)).tags


def champion_version(settings) -> int | None:
    from kpi.churn.registry import champion_version as current

    return current(settings)


def make_champion(settings, version: int) -> None:
    from kpi.churn.mlflow_utils import client

    client(settings).set_registered_model_alias(settings.churn_model_name, settings.churn_champion_alias, str(version))


def test_promotion_sequence_first_better_worse_and_broken(setup):
    from kpi.churn.registry import evaluate_and_promote

    settings, trained_model, holdout_file = setup
    holdout = pd.read_parquet(holdout_file)
    weak = weakened_model(trained_model, holdout)
    assert champion_version(settings) is None

    # 1. the first model becomes champion when its guardrails pass
    v_weak = register(settings, weak, holdout_file)
    first = evaluate_and_promote(settings, v_weak)
    assert first["decision"] == "promoted" and first["reason_code"] == "no_champion", first["reason"]
    assert first["champion_auc"] is None and first["compared_with_version"] is None
    assert champion_version(settings) == v_weak
    tags = version_tags(settings, v_weak)
    assert tags["promotion.decision"] == "promoted" and tags["promotion.reason_code"] == "no_champion"
    assert float(tags["promotion.candidate_auc"]) == pytest.approx(first["candidate_auc"], abs=1e-6)

    # 2. the trained model beats the weak champion by more than the margin: promoted
    v_good = register(settings, trained_model, holdout_file)
    better = evaluate_and_promote(settings, v_good)
    assert better["decision"] == "promoted" and better["reason_code"] == "beats_champion_by_margin", better["reason"]
    assert better["candidate_auc"] >= better["champion_auc"] + settings.churn_promotion_margin
    assert champion_version(settings) == v_good
    tags = version_tags(settings, v_good)
    assert float(tags["promotion.champion_auc"]) == pytest.approx(better["champion_auc"], abs=1e-6)
    assert tags["promotion.compared_with_version"] == str(v_weak)
    assert tags["promotion.champion_version_after"] == str(v_good)
    assert tags["promotion.margin"] == str(settings.churn_promotion_margin)

    # 3. a worse candidate is never promoted
    v_worse = register(settings, weak, holdout_file)
    worse = evaluate_and_promote(settings, v_worse)
    assert worse["decision"] == "kept_champion" and worse["reason_code"] == "not_better_by_margin"
    assert worse["candidate_auc"] < worse["champion_auc"]
    assert champion_version(settings) == v_good
    assert version_tags(settings, v_worse)["promotion.decision"] == "kept_champion"

    # 4. an equally good candidate does not clear the margin
    v_same = register(settings, trained_model, holdout_file)
    same = evaluate_and_promote(settings, v_same)
    assert same["decision"] == "kept_champion" and champion_version(settings) == v_good

    # 5. guardrails: failed parity, NaN predictions
    v_parity = register(settings, trained_model, holdout_file, parity=1e-3)
    broken = evaluate_and_promote(settings, v_parity)
    assert broken["decision"] == "rejected" and broken["reason_code"] == "guardrails_failed"
    assert "parity_with_spark" in broken["reason"]
    v_nan = register(settings, nan_scoring_model(holdout), holdout_file)
    nan = evaluate_and_promote(settings, v_nan)
    assert nan["decision"] == "rejected" and "no_nan_predictions" in nan["reason"]
    assert champion_version(settings) == v_good

    # re-evaluating the champion is a no-op
    assert evaluate_and_promote(settings, v_good)["decision"] == "already_champion"


def test_a_champion_without_its_features_in_the_holdout_cannot_be_compared(setup):
    from kpi.churn.registry import evaluate_and_promote

    base, trained_model, holdout_file = setup
    settings = fresh(base, "churn-registry-missing")
    holdout = pd.read_parquet(holdout_file)
    # a champion trained on a feature the current feature set no longer has
    gone = one_feature_model(holdout.assign(feature_from_the_past=holdout["pay_count_30d"]), "feature_from_the_past")
    v_old = register(settings, gone, holdout_file)
    make_champion(settings, v_old)
    v_new = register(settings, trained_model, holdout_file)

    kept = evaluate_and_promote(settings, v_new)
    assert kept["decision"] == "cannot_compare" and kept["reason_code"] == "champion_features_missing"
    assert "feature_from_the_past" in kept["reason"] and kept["compared_with_version"] == v_old
    assert kept["champion_auc"] is None and kept["candidate_auc"] > 0.6
    assert champion_version(settings) == v_old
    assert version_tags(settings, v_new)["promotion.reason_code"] == "champion_features_missing"

    # the setting turns the same situation into a promotion, with the same reason code
    promoting = settings.model_copy(update={"churn_promote_incomparable": True})
    promoted = evaluate_and_promote(promoting, v_new)
    assert promoted["decision"] == "promoted" and promoted["reason_code"] == "champion_features_missing"
    assert champion_version(settings) == v_new


def test_a_champion_with_nan_scores_is_recorded_as_such_not_as_a_feature_change(setup):
    from kpi.churn.registry import evaluate_and_promote

    base, trained_model, holdout_file = setup
    settings = fresh(base, "churn-registry-nan")
    holdout = pd.read_parquet(holdout_file)
    v_broken = register(settings, nan_scoring_model(holdout), holdout_file)
    make_champion(settings, v_broken)  # e.g. promoted by hand, or by an older platform
    v_new = register(settings, trained_model, holdout_file)

    decision = evaluate_and_promote(settings, v_new)
    assert decision["decision"] == "cannot_compare" and decision["reason_code"] == "champion_nan_scores"
    assert "NaN" in decision["reason"] and "feature" not in decision["reason"]
    assert champion_version(settings) == v_broken


def test_an_unreadable_champion_is_recorded_as_such(setup, tmp_path):
    from kpi.churn.mlflow_utils import client
    from kpi.churn.registry import evaluate_and_promote

    base, trained_model, holdout_file = setup
    settings = fresh(base, "churn-registry-unreadable")
    v_old = register(settings, trained_model, holdout_file)
    make_champion(settings, v_old)
    folder = client(settings).get_model_version_download_uri(settings.churn_model_name, str(v_old))
    (Path(folder.removeprefix("file://")) / "artifacts" / "churn_model.json").write_text("{not json")
    v_new = register(settings, trained_model, holdout_file)
    decision = evaluate_and_promote(settings, v_new)
    assert decision["decision"] == "cannot_compare" and decision["reason_code"] == "champion_unreadable"
    assert "not valid JSON" in decision["reason"]


def test_two_concurrent_promotions_move_the_alias_once(setup):
    """Both candidates beat champion A; both were compared with A; only the first alias move may happen."""
    from kpi.churn.registry import apply_promotion, decide_promotion

    base, trained_model, holdout_file = setup
    settings = fresh(base, "churn-registry-race")
    holdout = pd.read_parquet(holdout_file)
    v_a = register(settings, weakened_model(trained_model, holdout), holdout_file)
    make_champion(settings, v_a)
    v_b = register(settings, trained_model, holdout_file)
    v_c = register(settings, trained_model, holdout_file)
    decisions = [decide_promotion(settings, v) for v in (v_b, v_c)]
    assert [d.decision for d in decisions] == ["promoted", "promoted"]
    assert [d.compared_with_version for d in decisions] == [v_a, v_a]

    barrier = threading.Barrier(2)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def promote(decision) -> None:
        try:
            barrier.wait()
            results[decision.model_version] = apply_promotion(settings, decision)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(d,)) for d in decisions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    outcome = {v: (r.decision, r.reason_code) for v, r in results.items()}
    winners = [v for v, (d, _) in outcome.items() if d == "promoted"]
    assert len(winners) == 1, outcome
    (loser,) = {v_b, v_c} - set(winners)
    assert outcome[loser] == ("kept_champion", "champion_changed")
    assert champion_version(settings) == winners[0]
    for v in (v_b, v_c):
        tags = version_tags(settings, v)
        assert tags["promotion.compared_with_version"] == str(v_a)
        assert tags["promotion.champion_version_after"] == str(winners[0])
    assert f"from v{v_a} to v{winners[0]}" in version_tags(settings, loser)["promotion.reason"]


def test_the_alias_waits_for_the_registry_lock(setup):
    from kpi.churn.registry import registry_lock, set_alias_if_unchanged

    base, trained_model, holdout_file = setup
    settings = fresh(base, "churn-registry-lock")
    v_1 = register(settings, trained_model, holdout_file)
    moved: list[tuple[bool, int | None]] = []
    with registry_lock(settings):
        worker = threading.Thread(target=lambda: moved.append(set_alias_if_unchanged(settings, None, v_1)))
        worker.start()
        worker.join(timeout=2.0)
        assert worker.is_alive() and not moved, "the alias moved while another promotion held the lock"
        assert champion_version(settings) is None
    worker.join(timeout=60)
    assert moved == [(True, v_1)] and champion_version(settings) == v_1
    # compare-and-set refuses a stale expectation
    assert set_alias_if_unchanged(settings, None, v_1) == (False, v_1)


def test_a_lock_left_by_a_dead_process_is_broken_after_its_time(setup):
    from kpi.churn.mlflow_utils import client
    from kpi.churn.registry import LOCK_SUFFIX, PromotionLockTimeout, registry_lock

    settings = fresh(setup[0], "churn-registry-stale")
    client(settings).create_registered_model(settings.churn_model_name + LOCK_SUFFIX, tags={"owner": "dead:1"})
    with pytest.raises(PromotionLockTimeout, match="dead:1"), registry_lock(settings, wait_seconds=0.5):
        pass
    with registry_lock(settings, wait_seconds=5, stale_seconds=0.0) as owner:
        assert owner != "dead:1"


def test_load_champion_is_cached_until_the_alias_moves(trained):
    from kpi.churn.mlflow_utils import client
    from kpi.churn.registry import evaluate_and_promote, load_champion

    evaluate_and_promote(trained.settings, 1)
    first = load_champion(trained.settings)
    assert first is not None and first.version == 1
    assert load_champion(trained.settings) is first
    assert first.auc == pytest.approx(trained.result["auc"])
    assert first.reference_features_uri.endswith("reference/features.parquet")
    assert first.trained_at
    # no stages anywhere: the alias is the only serving marker
    mv = client(trained.settings).get_model_version("churn-model", "1")
    assert mv.aliases == ["champion"]
    assert np.isfinite(first.model.predict_proba(first.model.example_frame(2))).all()
