"""The scoring API (`kpi churn serve`) on a real champion: scores, SHAP, 4xx that name the field, following the
alias when it moves, a registry outage, no champion at all, and the CLI as the chart runs it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import move_alias

pytestmark = pytest.mark.slow  # the session's champion is trained with Spark once


def _client(settings, ttl: float = 30.0):
    from fastapi.testclient import TestClient
    from kpi.churn.serve import ChampionFollower, create_app

    return TestClient(create_app(settings, ChampionFollower(settings, ttl=ttl)))


def _users(churn_store, settings, count: int) -> list[dict]:
    """Real users: their features as of the store's date, from the pipeline's own pandas feature code."""
    from kpi.churn.features import scoring_set_pandas
    from kpi.churn.registry import load_champion
    from kpi.churn.sources import ID

    names = load_champion(settings).model.feature_names
    frame = scoring_set_pandas(churn_store["data_url"], churn_store["as_of"], settings).head(count)
    records = json.loads(frame[names].to_json(orient="records", double_precision=15))
    return [{"id": int(uid), "features": rec} for uid, rec in zip(frame[ID], records, strict=True)]


def _wait_for_version(client, version: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/model").json()
        if answer.get("version") == version or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_score_returns_probability_model_version_and_top_k_shap(serving_env, churn_store):
    from kpi.churn.explain import shap_values
    from kpi.churn.registry import load_champion

    champion = load_champion(serving_env)
    users = _users(churn_store, serving_env, 25)
    with _client(serving_env) as client:
        answer = client.post("/score", json={"users": users, "top_k": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == champion.version == body["model"]["version"]
    assert body["model"]["run_id"] == champion.run_id
    frame = pd.DataFrame([u["features"] for u in users])[champion.model.feature_names]
    expected = champion.model.predict_proba(frame)
    base, phi = shap_values(champion.model, frame)
    predictions = body["predictions"]
    assert [p["id"] for p in predictions] == [u["id"] for u in users]
    for i, prediction in enumerate(predictions):
        assert prediction["p_active_60d"] == pytest.approx(expected[i], abs=1e-12)
        shap = prediction["shap"]
        listed = shap["contributions"]
        assert len(listed) == 3
        assert [abs(c["contribution"]) for c in listed] == sorted((abs(c["contribution"]) for c in listed), reverse=True)
        assert abs(listed[-1]["contribution"]) == pytest.approx(np.sort(np.abs(phi[i]))[-3], abs=1e-12)
        # base + listed + rest is the logit of the probability: nothing is lost by showing the top k
        logit = shap["base_value"] + sum(c["contribution"] for c in listed) + shap["rest"]
        assert logit == pytest.approx(math.log(prediction["p_active_60d"] / (1 - prediction["p_active_60d"])), abs=1e-9)
        assert shap["base_value"] == pytest.approx(base)
        for c in listed:
            sent = users[i]["features"][c["feature"]]
            assert c["value"] == sent or (sent is None and c["value"] is None) or str(c["value"]) == str(sent)


def test_one_user_without_shap_and_the_default_top_k(serving_env, churn_store):
    users = _users(churn_store, serving_env, 1)
    with _client(serving_env) as client:
        bare = client.post("/score", json={"users": users, "top_k": 0}).json()["predictions"][0]
        default = client.post("/score", json={"users": users}).json()["predictions"][0]
    assert "shap" not in bare and 0.0 < bare["p_active_60d"] < 1.0
    assert len(default["shap"]["contributions"]) == serving_env.churn_serve_top_k
    assert default["p_active_60d"] == bare["p_active_60d"]


def test_requests_waiting_together_share_one_model_call_and_each_gets_its_own_answer(serving_env, churn_store):
    import asyncio

    from kpi.churn.registry import load_champion
    from kpi.churn.serve import Batcher, check_users, prepare, score_request

    served = prepare(load_champion(serving_env))
    users = _users(churn_store, serving_env, 12)
    top_ks = [0, 3, 1, 5] * 3
    batcher = Batcher()

    async def concurrently():
        return await asyncio.gather(*(batcher.score(served, check_users(served, [u["features"]]), [u["id"]], k)
                                      for u, k in zip(users, top_ks, strict=True)))

    answers = asyncio.run(concurrently())
    assert (batcher.calls, batcher.requests) == (1, 12)
    for user, k, (answer,) in zip(users, top_ks, answers, strict=True):
        (alone,) = score_request(served, [user], k)
        assert answer["id"] == user["id"] and answer["p_active_60d"] == pytest.approx(alone["p_active_60d"], abs=1e-12)
        assert ("shap" in answer) == (k > 0)
        if k:
            assert [c["feature"] for c in answer["shap"]["contributions"]] == [
                c["feature"] for c in alone["shap"]["contributions"]]
            assert answer["shap"]["rest"] == pytest.approx(alone["shap"]["rest"], abs=1e-9)


def test_unknown_values_are_null_and_scored_like_the_pipeline_scores_blanks(serving_env, churn_store):
    from kpi.churn.registry import load_champion

    champion = load_champion(serving_env)
    user = _users(churn_store, serving_env, 1)[0]
    numeric, categorical = champion.model.numeric_features[0], champion.model.categorical_features[0]
    user["features"].update({numeric: None, categorical: None})
    with _client(serving_env) as client:
        answer = client.post("/score", json={"users": [user]})
    assert answer.status_code == 200, answer.text
    frame = pd.DataFrame([user["features"]])[champion.model.feature_names]
    assert answer.json()["predictions"][0]["p_active_60d"] == pytest.approx(champion.model.predict_proba(frame)[0])


@pytest.mark.parametrize(("change", "field", "message"), [
    ("text", "numeric", "is not a number"),
    ("bool", "numeric", "is not a number"),
    ("nan", "numeric", "is not a finite number"),
    ("unknown category", "categorical", "is not a known value"),
    ("missing", "numeric", "missing (send null for an unknown value)"),
    ("typo", "pay_count_30dd", "not a feature of this model"),
])
def test_bad_input_is_refused_with_422_naming_the_user_and_field(serving_env, churn_store, change, field, message):
    from kpi.churn.registry import load_champion

    champion = load_champion(serving_env)
    users = _users(churn_store, serving_env, 3)
    name = {"numeric": champion.model.numeric_features[1], "categorical": champion.model.categorical_features[0]
            }.get(field, field)
    bad = users[2]["features"]
    if change == "missing":
        del bad[name]
    else:
        bad[name] = {"text": "lots", "bool": True, "nan": float("nan"), "unknown category": "NOT-A-LEVEL",
                     "typo": 3}[change]
    with _client(serving_env) as client:
        answer = client.post("/score", content=json.dumps({"users": users}),  # json.dumps writes NaN as JSON does not
                             headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "users", 2, "features", name]]
    assert detail[0]["msg"].startswith(f"users[2].features.{name}: ") and message in detail[0]["msg"]


def test_a_malformed_request_is_refused_naming_what_is_wrong(serving_env, churn_store, monkeypatch):
    users = _users(churn_store, serving_env, 4)
    monkeypatch.setenv("KPI_CHURN_SERVE_MAX_USERS", "3")
    from kpi.settings import reload_settings

    settings = reload_settings()
    with _client(settings) as client:
        cases = {
            "no users": client.post("/score", json={"users": []}),
            "top_k": client.post("/score", json={"users": users[:1], "top_k": -1}),
            "envelope typo": client.post("/score", json={"user": users[:1]}),
            "features not an object": client.post("/score", json={"users": [{"id": 1, "features": [1, 2]}]}),
            "too many": client.post("/score", json={"users": users}),
        }
    locs = {name: [d["loc"] for d in r.json()["detail"]] for name, r in cases.items()}
    assert {name: r.status_code for name, r in cases.items()} == {
        "no users": 422, "top_k": 422, "envelope typo": 422, "features not an object": 422, "too many": 413}
    assert locs["no users"] == [["body", "users"]]
    assert locs["top_k"] == [["body", "top_k"]]
    assert ["body", "users"] in locs["envelope typo"] and ["body", "user"] in locs["envelope typo"]
    assert locs["features not an object"] == [["body", "users", 0, "features"]]
    assert locs["too many"] == [["body", "users"]] and "KPI_CHURN_SERVE_MAX_USERS" in cases["too many"].text


def test_model_and_healthz_describe_the_served_champion(serving_env):
    from kpi.churn.registry import load_champion

    champion = load_champion(serving_env)
    with _client(serving_env) as client:
        model = client.get("/model").json()
        health = client.get("/healthz")
    assert (model["name"], model["alias"], model["version"], model["run_id"]) == (
        champion.name, "champion", champion.version, champion.run_id)
    assert model["trained_at"] == champion.trained_at and model["auc"] == pytest.approx(champion.auc)
    assert set(model["features"]) == set(champion.model.feature_names)
    assert health.status_code == 200
    assert health.json()["champion_version"] == champion.version and health.json()["refresh_error"] is None


def test_the_api_follows_the_alias_when_it_moves_without_a_restart(serving_env, churn_store):
    versions = [r["training"]["model_version"] for r in churn_store["rounds"]]
    champion, other = versions[0], versions[1]
    users = _users(churn_store, serving_env, 2)
    with _client(serving_env, ttl=0.5) as client:
        assert client.get("/model").json()["version"] == champion
        move_alias(serving_env, other)
        assert _wait_for_version(client, other)["version"] == other
        assert client.post("/score", json={"users": users}).json()["model_version"] == other
        move_alias(serving_env, champion)
        assert _wait_for_version(client, champion)["version"] == champion
        assert client.post("/score", json={"users": users}).json()["model_version"] == champion


def test_a_registry_that_stops_answering_leaves_the_last_champion_in_service(serving_env, churn_store, own_registry):
    users = _users(churn_store, serving_env, 1)
    with _client(serving_env, ttl=0.3) as client:
        version = client.get("/model").json()["version"]
        # the registry's database turns into something that is not a database
        Path(own_registry.removeprefix("sqlite:///")).write_bytes(b"this is not a database" * 100)
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["refresh_error"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
        health = client.get("/healthz").json()
        answer = client.post("/score", json={"users": users})
    assert health["refresh_error"] and health["champion_version"] == version
    assert answer.status_code == 200 and answer.json()["model_version"] == version


def test_without_a_champion_score_is_503_and_the_pod_stays_healthy(serving_env, monkeypatch, tmp_path):
    from kpi.settings import reload_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    settings = reload_settings()
    with _client(settings) as client:
        health = client.get("/healthz")
        score = client.post("/score", json={"users": [{"features": {}}]})
        model = client.get("/model")
    assert health.status_code == 200 and health.json()["champion_version"] is None
    assert score.status_code == 503 and "champion" in score.json()["detail"] and "kpi churn train" in score.text
    assert model.status_code == 503


def test_kpi_churn_serve_answers_over_http_and_stops_cleanly(serving_env, churn_store):
    """The command the chart's Deployment runs, as a process of its own."""
    import urllib.request

    from kpi.platform.local import free_port

    port = free_port()
    env = {**os.environ, **serving_env.store_environment(), "KPI_ENV": "test"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "kpi"), "churn", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/score", method="POST",
                                         data=json.dumps({"users": _users(churn_store, serving_env, 2)}).encode(),
                                         headers={"Content-Type": "application/json"})
        scored = json.loads(urllib.request.urlopen(request, timeout=30).read())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert health["champion_version"] == scored["model_version"] == churn_store["rounds"][0]["training"]["model_version"]
    assert len(scored["predictions"]) == 2
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["port"] == port and summary["champion_version"] == health["champion_version"]
    assert "serving churn-model v" in err  # which version it served is in the log
