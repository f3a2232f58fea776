"""The scoring API of the churn champion (``kpi churn serve``): FastAPI on uvicorn.

- ``POST /score``: one or many users' features -> ``p_active_60d``, the model version and, per prediction,
  the top-k SHAP contributions (log-odds, exact: :func:`kpi.churn.explain.shap_values`). The features are
  checked with the dashboard's own field checks (:mod:`kpi.churn.inputs`): a refused request is a 422 whose
  ``detail`` names every bad field (``loc`` ``["body", "users", i, "features", name]``).
- ``GET /model``: the served version, its run, model family, training date, holdout AUC and its input schema.
- ``GET /healthz``: the process answers (200, also before any champion exists, so that a fresh platform's
  pods become ready); it says which version is served and when the alias was last read.

The champion is the version holding the ``champion`` alias (:func:`kpi.churn.registry.load_champion`). A
background thread re-reads the alias every ``KPI_CHURN_SERVE_CHAMPION_TTL_SECONDS`` and swaps in a new
version once it is loaded and warmed up: requests never wait for the registry, a promotion is served
without a restart, and a registry that stops answering leaves the last champion in service.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kpi.churn.inputs import (
    FormField,
    InvalidInput,
    form_fields,
    records_columns,
    records_frame,
)
from kpi.settings import Settings

log = logging.getLogger(__name__)

PROBABILITY = "p_active_60d"


@dataclass(frozen=True)
class Served:
    """A champion ready to answer: the model, its fields (input checks) and when it was loaded."""

    champion: Any  # kpi.churn.registry.Champion
    fields: list[FormField]
    schema: dict[str, Any]
    loaded_at: str

    @property
    def version(self) -> int:
        return int(self.champion.version)


def prepare(champion) -> Served:
    """Fields from the champion's input schema, and one warm-up prediction and explanation (the first call
    of a model pays for lazy imports and compilation; a request should not)."""
    from kpi.churn.explain import shap_values

    schema = champion.model.input_schema()
    fields = form_fields(schema)
    example = records_frame(fields, [{f.name: f.default for f in fields}] * 2)
    champion.model.predict_proba(example)
    shap_values(champion.model, example)
    return Served(champion, fields, schema, _now())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class ChampionFollower:
    """The served champion, following the alias: :meth:`refresh` once, then every ``ttl`` seconds on a thread.

    Attributes:
        served: what requests use (swapped whole, never changed in place); None before any champion exists.
        checked_at: when the alias was last read successfully.
        error: the last failure to read the alias or load its version (cleared by the next success).
    """

    settings: Settings
    ttl: float | None = None
    served: Served | None = None
    checked_at: str | None = None
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ttl is None:
            self.ttl = self.settings.churn_serve_champion_ttl_seconds

    def refresh(self) -> bool:
        """Read the alias; load and warm up a new version. True when the served version changed."""
        from kpi.churn.registry import load_champion

        try:
            champion = load_champion(self.settings)
            before = self.served
            if champion is None:
                self.served = None
            elif before is None or before.version != int(champion.version):
                self.served = prepare(champion)
                log.info("serving %s v%s (run %s)", champion.name, champion.version, champion.run_id)
            self.checked_at, self.error = _now(), None
            return (before and before.version) != (self.served and self.served.version)
        except Exception as exc:  # noqa: BLE001 - a registry outage keeps the last champion in service
            self.error = self.settings.redact(f"{type(exc).__name__}: {exc}")
            log.warning("champion alias not refreshed, still serving %s: %s",
                        self.served and f"v{self.served.version}", self.error)
            return False

    def start(self) -> None:
        """Re-read the alias every ``ttl`` seconds on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.ttl):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="champion-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _number(value: Any) -> Any:
    """A JSON-safe scalar: numpy types as Python ones, NaN and infinities as null."""
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return _number(obj)


def check_users(served: Served, features: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The users' features checked with the model's fields, as typed columns.

    Raises:
        InvalidInput: bad or missing features, each named ``users[i].features.<name>``.
    """
    return records_columns(served.fields, features, where=lambda i: f"users[{i}].features")


@dataclass
class Scored:
    """Probabilities (and SHAP values) of some rows, from one model call: what answers one or many requests."""

    p: np.ndarray
    values: np.ndarray  # (rows, features) the inputs, for the contributions' "value"
    names: list[str]
    base: float | None = None
    phi: np.ndarray | None = None  # (rows, features) SHAP values in log-odds, or None

    def predictions(self, ids: list[Any], top_k: int, start: int = 0) -> list[dict[str, Any]]:
        """The answer for rows ``start .. start + len(ids)``: ``id``, ``p_active_60d`` and, with ``top_k``,
        ``shap``: ``base_value``, ``contributions`` (``feature``, ``value``, ``contribution``, largest |value|
        first) and ``rest`` (the sum of the others); ``base_value`` + contributions + ``rest`` is the logit."""
        rows = range(start, start + len(ids))
        out = [{"id": uid, PROBABILITY: float(self.p[i])} for uid, i in zip(ids, rows, strict=True)]
        if top_k <= 0 or self.phi is None:
            return out
        phi = self.phi[start:start + len(ids)]
        k = min(top_k, len(self.names))
        order = np.argsort(-np.abs(phi), axis=1, kind="stable")[:, :k]
        totals = phi.sum(axis=1)
        for row, (i, top) in enumerate(zip(rows, order, strict=True)):
            listed = [{"feature": self.names[j], "value": _number(self.values[i, j]), "contribution": float(phi[row, j])}
                      for j in top]
            out[row]["shap"] = {"base_value": self.base, "contributions": listed,
                                "rest": float(totals[row] - phi[row, top].sum())}
        return out


def score_columns(served: Served, columns: dict[str, np.ndarray], explain: bool) -> Scored:
    """One ``predict_proba`` (and, with ``explain``, one exact ``shap_values``) over checked columns.

    The model reads the columns as they are (no DataFrame): building a frame and indexing it cost more than
    the model's arithmetic for a one-user request.
    """
    model = served.champion.model
    p = np.asarray(model.predict_proba(columns), dtype=np.float64).reshape(-1)
    names = list(model.feature_names)
    if not explain:
        return Scored(p=p, values=np.empty((len(p), 0), dtype=object), names=names)
    from kpi.churn.explain import shap_values

    base, phi = shap_values(model, columns)
    values = np.empty((len(p), len(names)), dtype=object)
    for j, name in enumerate(names):
        values[:, j] = columns[name]
    return Scored(p=p, values=values, names=names, base=float(base), phi=np.asarray(phi, dtype=np.float64))


def score_request(served: Served, users: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """Score ``users`` (``{"id": ..., "features": {...}}``) with the served champion (see :meth:`Scored.predictions`).

    Raises:
        InvalidInput: bad or missing features, each named ``users[i].features.<name>``.
    """
    columns = check_users(served, [u["features"] for u in users])
    return score_columns(served, columns, top_k > 0).predictions([u.get("id") for u in users], top_k)


class Batcher:
    """Dynamic batching: requests waiting while the model is busy are scored together, with one
    ``predict_proba`` and one ``shap_values`` call over all their rows.

    The model's fixed cost per call (building a frame, column lookups) dominates a one-user request; under
    load, the requests that arrive during a call share the next one, so throughput grows with the load
    instead of a queue. A request alone is scored at once: batching adds no wait. Runs on the event loop.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Served, dict[str, np.ndarray], list[Any], int, asyncio.Future]] = []
        self._scheduled = False
        self.calls = 0
        self.requests = 0

    async def score(self, served: Served, columns: dict[str, np.ndarray], ids: list[Any],
                    top_k: int) -> list[dict[str, Any]]:
        """The predictions of one request's checked columns (see :meth:`Scored.predictions`)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((served, columns, ids, top_k, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return await future

    def _drain(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        groups: dict[int, list] = {}
        for item in pending:  # a request keeps the version it started with, even if the alias just moved
            groups.setdefault(id(item[0]), []).append(item)
        for items in groups.values():
            served = items[0][0]
            try:
                names = list(items[0][1])
                columns = items[0][1] if len(items) == 1 else {
                    name: np.concatenate([item[1][name] for item in items]) for name in names}
                scored = score_columns(served, columns, any(item[3] > 0 for item in items))
            except Exception as exc:  # noqa: BLE001 - every request of the call gets the error
                for item in items:
                    if not item[4].done():
                        item[4].set_exception(exc)
                continue
            self.calls += 1
            start = 0
            for _, _, ids, top_k, future in items:
                if not future.done():
                    future.set_result(scored.predictions(ids, top_k, start))
                self.requests += 1
                start += len(ids)


class UserFeatures(BaseModel):
    """One user of a POST /score request."""

    model_config = ConfigDict(extra="forbid")
    id: int | str | None = Field(None, description="The user's id (CUS_CUST_ID_BUY), echoed back.")
    features: dict[str, Any] = Field(
        description="Every feature of the model (GET /model lists them); null for an unknown value.")


class ScoreRequest(BaseModel):
    """The body of POST /score."""

    model_config = ConfigDict(extra="forbid")
    users: list[UserFeatures] = Field(min_length=1, description="One or many users to score.")
    top_k: int | None = Field(None, ge=0, le=100,
                              description="SHAP contributions per prediction (default KPI_CHURN_SERVE_TOP_K).")


def create_app(settings: Settings, follower: ChampionFollower | None = None):
    """The FastAPI application; ``follower`` defaults to one on ``settings`` (started with the app)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    follower = follower or ChampionFollower(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        follower.refresh()  # the first champion before the port opens
        follower.start()
        try:
            yield
        finally:
            follower.stop()

    app = FastAPI(title="KPI Platform churn scoring API", version="1", lifespan=lifespan,
                  description="Probability of at least one payment in the next 60 days (p_active_60d) from the "
                              f"`{settings.churn_champion_alias}` version of `{settings.churn_model_name}`.")
    batcher = Batcher()
    app.state.follower, app.state.batcher = follower, batcher

    def no_champion() -> JSONResponse:
        reason = f" (last alias read failed: {follower.error})" if follower.error else ""
        return JSONResponse(status_code=503, content={"detail": (
            f"no model holds the alias '{settings.churn_champion_alias}' of '{settings.churn_model_name}' yet"
            f"{reason}: train and promote one (`kpi churn train`, or the churn_training DAG)")})

    @app.get("/healthz", summary="The process answers; which champion it serves")
    async def healthz() -> JSONResponse:
        served = follower.served
        return JSONResponse({"status": "ok", "champion_version": served and served.version,
                             "checked_at": follower.checked_at, "refresh_error": follower.error,
                             "scored": {"requests": batcher.requests, "model_calls": batcher.calls}})

    @app.get("/model", summary="The served champion: version, run, training date, AUC, input schema")
    async def model() -> JSONResponse:
        served = follower.served
        if served is None:
            return no_champion()
        champ = served.champion
        return JSONResponse(_jsonable({
            "name": champ.name, "alias": settings.churn_champion_alias, "version": served.version,
            "run_id": champ.run_id, "family": champ.model.family, "trained_at": champ.trained_at, "auc": champ.auc,
            "loaded_at": served.loaded_at,
            "checked_at": follower.checked_at, "features": served.schema,
        }))

    @app.post("/score", summary="Score one or many users with the champion, with SHAP contributions")
    async def score(payload: ScoreRequest) -> JSONResponse:
        served = follower.served  # one version for the whole request, even if the alias moves meanwhile
        if served is None:
            return no_champion()
        if len(payload.users) > settings.churn_serve_max_users:
            return JSONResponse(status_code=413, content={"detail": [{
                "loc": ["body", "users"], "type": "too_long",
                "msg": f"users: {len(payload.users)} users in one request, more than the limit of "
                       f"{settings.churn_serve_max_users} (KPI_CHURN_SERVE_MAX_USERS); split the request"}]})
        top_k = settings.churn_serve_top_k if payload.top_k is None else payload.top_k
        try:
            columns = check_users(served, [u.features for u in payload.users])
        except InvalidInput as exc:
            detail = [{"loc": ["body", "users", row, "features", name], "msg": problem, "type": "value_error"}
                      for problem, (row, name) in zip(exc.problems, exc.locations, strict=True)]
            return JSONResponse(status_code=422, content={"detail": detail, "message": str(exc)})
        predictions = await batcher.score(served, columns, [u.id for u in payload.users], top_k)
        return JSONResponse({"model_version": served.version, "model": {
            "name": served.champion.name, "version": served.version, "run_id": served.champion.run_id},
            "predictions": predictions})

    return app


def serve(settings: Settings, host: str, port: int, access_log: bool = False) -> dict[str, Any]:
    """Run the API with uvicorn until it is stopped (SIGINT/SIGTERM); return what it served.

    Args:
        settings: platform settings (MLflow store, model name and alias, the API's limits).
        host: address to listen on (``0.0.0.0`` in a pod, ``127.0.0.1`` on a machine).
        port: port to listen on.
        access_log: one log line per request (off by default: the hot path stays short).
    """
    import uvicorn

    from kpi.redaction import redact_url

    follower = ChampionFollower(settings)
    app = create_app(settings, follower)
    log.info("scoring API on http://%s:%s, champion from %s", host, port, redact_url(settings.resolved_mlflow_uri))
    started = time.monotonic()
    # uvicorn's own logging, plus this module's lines (which version is served, failed alias reads)
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["kpi"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # uvicorn stops gracefully on SIGINT/SIGTERM and then raises the signal again for the handler that was in
    # place before it: with this one, a requested stop ends the command normally (summary, exit code 0)
    stopped: list[str] = []
    previous = {sig: signal.signal(sig, lambda number, _: stopped.append(signal.Signals(number).name))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_config=config,
                    timeout_graceful_shutdown=10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"host": host, "port": port, "champion_version": follower.served and follower.served.version,
            "stopped_by": stopped[0] if stopped else None, "seconds": round(time.monotonic() - started, 1)}
