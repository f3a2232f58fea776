"""Change detection on the churn source files: content fingerprints against the last ones seen.

The state lives in object storage, ``<KPI_STORAGE_URL>/watchdog/state.json``, one entry per watched
location, so the CLI, the demo and Airflow (embedded or in the cluster) share it and it survives a reset
of the Airflow metadata database. Each file's content hash (sha256) is the identity; the cheap identity
(size + ETag or mtime) only decides whether a file must be read again, so an unchanged 1 GB PAYMENTS.csv
is not re-hashed every run, and a re-upload of identical bytes is *not* a change.

Detection and commit are two steps, and the commit is a compare-and-swap (:func:`kpi.storage.write_if_unchanged`:
S3 If-Match / If-None-Match, an exclusive lock on file://): a check is recorded only if nobody recorded the same
location since the check read it. Two runs that see one change at the same time therefore cannot both record
it; :func:`watch` re-checks after losing, and then sees no change. Only the run whose commit won announces the
change, so it fires exactly once. A run that committed but failed before its event was recorded is retried by
Airflow under the same ``claimed_by`` (the DAG run id): the entry it wrote names it, and the retry announces the
change again (at least once).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Any

from kpi import storage
from kpi.settings import Settings

log = logging.getLogger(__name__)

STATE_PATH = "watchdog/state.json"


def state_url(settings: Settings) -> str:
    """URL of the watchdog state: ``<KPI_STORAGE_URL>/watchdog/state.json``."""
    return storage.join(settings.resolved_storage_url, STATE_PATH)


def watched_data_url(settings: Settings) -> str:
    """The location the watchdog watches: ``KPI_CHURN_DATA_URL``, else ``<storage>/churn/sources``."""
    return (settings.churn_data_url or storage.join(settings.resolved_storage_url, "churn", "sources")).rstrip("/")


# a commit that keeps losing to writers of *other* locations retries this often before giving up
COMMIT_ATTEMPTS = 20


class StateContention(RuntimeError):
    """The watchdog state kept changing under this run's commits; nothing was recorded."""


def load_state(settings: Settings) -> dict[str, Any]:
    """The whole state document (``{data_url: entry}``); empty when nothing was seen yet.

    Raises:
        ValueError: When the state file exists but is not a JSON object (it is left untouched).
    """
    return _load_versioned(settings)[0]


def _load_versioned(settings: Settings) -> tuple[dict[str, Any], str | None]:
    url = state_url(settings)
    raw, version = storage.read_versioned(url, settings)
    if raw is None:
        return {}, None
    try:
        state = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"watchdog state {url} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(state, dict):
        raise ValueError(f"watchdog state {url} must be a JSON object, got {type(state).__name__}")  # noqa: TRY004
    return state, version


def _cheap_identity(info: dict[str, Any]) -> str:
    """Size plus ETag (S3) or mtime (local): changes whenever the object was rewritten."""
    etag = info.get("ETag") or info.get("etag")
    stamp = etag or info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    return f"{info.get('size')}:{stamp}"


def scan_sources(settings: Settings, data_url: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fingerprint the five source files, reusing previous hashes whose cheap identity did not change.

    Returns:
        ``files`` (name -> {sha256, identity}), ``missing`` (names), ``hashed`` (names read this time).
    """
    from kpi.churn.sources import SOURCE_FILES, source_url

    previous_files = (previous or {}).get("files", {})
    files: dict[str, dict[str, str]] = {}
    missing: list[str] = []
    hashed: list[str] = []
    for name in SOURCE_FILES.values():
        url = source_url(data_url, name)
        fs, path = storage.filesystem(url, settings)
        fs.invalidate_cache(path)  # fsspec instances are cached per process; listings must be fresh
        try:
            info = fs.info(path)
        except FileNotFoundError:
            missing.append(name)
            continue
        identity = _cheap_identity(info)
        before = previous_files.get(name)
        if before and before.get("identity") == identity and before.get("sha256"):
            files[name] = {"sha256": before["sha256"], "identity": identity}
        else:
            files[name] = {"sha256": storage.content_fingerprint(url, settings), "identity": identity}
            hashed.append(name)
    return {"files": files, "missing": missing, "hashed": hashed}


def data_version_of(files: dict[str, dict[str, str]]) -> str:
    """The data version tag from file hashes (the same formula as ``sources.data_version``)."""
    import hashlib

    digest = hashlib.sha256()
    for name, entry in sorted(files.items()):
        digest.update(f"{name}:{entry['sha256']}\n".encode())
    return digest.hexdigest()


def check_sources(settings: Settings, data_url: str | None = None, claimed_by: str | None = None) -> dict[str, Any]:
    """Compare the sources' fingerprints with the last ones seen (nothing is written).

    Args:
        settings: Platform settings (storage root of the state).
        data_url: Location of the five CSVs; default :func:`watched_data_url`.
        claimed_by: Who announces a change this check finds (the DAG run id); when the recorded entry
            already names this claimant for the current data version, the change is announced again
            (``redelivered``): a retry of a run that committed but failed before its event was recorded.

    Returns:
        ``changed`` (bool), ``changed_files`` (new or modified names), ``missing``, ``first_seen``,
        ``data_version``, ``previous_data_version``, ``redelivered``, ``entry`` (the state entry to commit)
        and ``base`` (the entry this check compared with; :func:`commit` requires it unchanged).
        Incomplete sources (a file missing) are never a change: an upload in progress must not trigger
        training.
    """
    data_url = (data_url or watched_data_url(settings)).rstrip("/")
    state = load_state(settings)
    previous = state.get(data_url)
    scan = scan_sources(settings, data_url, previous)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result: dict[str, Any] = {
        "data_url": data_url,
        "state_url": state_url(settings),
        "missing": scan["missing"],
        "hashed": scan["hashed"],
        "first_seen": previous is None,
        "previous_data_version": (previous or {}).get("data_version"),
        "redelivered": False,
        "base": previous,
    }
    if scan["missing"]:
        log.warning("churn sources under %s are incomplete: missing %s", data_url, scan["missing"])
        return {**result, "changed": False, "changed_files": [], "data_version": None, "entry": None}
    before = (previous or {}).get("files", {})
    changed_files = sorted(n for n, e in scan["files"].items()
                           if before.get(n, {}).get("sha256") != e["sha256"])
    version = data_version_of(scan["files"])
    previous = previous or {}
    redelivered = (not changed_files and claimed_by is not None and previous.get("claimed_by") == claimed_by
                   and previous.get("data_version") == version)
    if redelivered:
        changed_files = list(previous.get("changed_files") or [])
        log.warning("churn sources under %s: %s recorded this change but is running again; announcing it again",
                    data_url, claimed_by)
    changed = bool(changed_files)
    entry = {
        "files": scan["files"],
        "data_version": version,
        "checked_at": now,
        "changed_at": (previous.get("changed_at") if redelivered else now) if changed else previous.get("changed_at"),
        "changed_files": changed_files if changed else previous.get("changed_files", []),
        "claimed_by": claimed_by if changed else previous.get("claimed_by"),
    }
    return {**result, "changed": changed, "changed_files": changed_files, "data_version": version,
            "redelivered": redelivered, "entry": entry}


def commit(settings: Settings, check: dict[str, Any]) -> bool:
    """Record a :func:`check_sources` result, unless another run recorded its location since it was read.

    A compare-and-swap on the state object: when a write loses to a commit for *another* location, the
    state is read again and the write retried; when this location's entry is no longer the one the check
    compared with, the check is stale and nothing is written.

    Returns:
        True when the check was recorded (or had nothing to record); False when it is stale: another run
        recorded this location first, so any change in it is that run's to announce.

    Raises:
        StateContention: the state kept changing for ``COMMIT_ATTEMPTS`` attempts.
    """
    if check.get("entry") is None:
        return True
    url = state_url(settings)
    for _ in range(COMMIT_ATTEMPTS):
        state, version = _load_versioned(settings)
        if state.get(check["data_url"]) != check["base"]:
            return False
        # a fresh revision makes every write distinct, so an ETag or hash can never come back (no ABA)
        state[check["data_url"]] = {**check["entry"], "revision": uuid.uuid4().hex}
        try:
            storage.write_if_unchanged(url, json.dumps(state, indent=2, sort_keys=True).encode(), version, settings)
            return True
        except storage.WriteConflict:
            continue
    raise StateContention(f"watchdog state {url} changed under {COMMIT_ATTEMPTS} commits in a row; nothing recorded")


def public(check: dict[str, Any]) -> dict[str, Any]:
    """A check without its state bookkeeping (``entry``, ``base``): what callers print and return."""
    return {k: v for k, v in check.items() if k not in ("entry", "base")}


def watch(settings: Settings, data_url: str | None = None, claimed_by: str | None = None) -> dict[str, Any]:
    """Check and commit until a commit holds; return that check (announce its change only if ``changed``).

    Args:
        settings: Platform settings (storage root of the state).
        data_url: Location of the five CSVs; default :func:`watched_data_url`.
        claimed_by: Who announces the change (see :func:`check_sources`); the DAG passes its run id.

    Raises:
        StateContention: the state kept changing for ``COMMIT_ATTEMPTS`` attempts.
    """
    for _ in range(COMMIT_ATTEMPTS):
        check = check_sources(settings, data_url, claimed_by)
        if commit(settings, check):
            return public(check)
        log.info("watchdog: another run recorded %s first; checking again", check["data_url"])
    raise StateContention(f"watchdog state {state_url(settings)}: another run recorded {check['data_url']} "
                          f"before each of {COMMIT_ATTEMPTS} checks; nothing recorded")
