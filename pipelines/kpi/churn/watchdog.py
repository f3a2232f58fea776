"""Change detection on the churn source files: content fingerprints against the last ones seen.

The state lives in object storage, ``<KPI_STORAGE_URL>/watchdog/state.json``, one entry per watched
location, so the CLI, the demo and Airflow (embedded or in the cluster) share it and it survives a reset
of the Airflow metadata database. Each file's content hash (sha256) is the identity; the cheap identity
(size + ETag or mtime) only decides whether a file must be read again, so an unchanged 1 GB PAYMENTS.csv
is not re-hashed every run, and a re-upload of identical bytes is *not* a change.

Detection and commit are two steps: the DAG emits its asset event and commits the state in the same task,
commit last, so a failure before the commit leaves the change to be detected again (at least once).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
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


def load_state(settings: Settings) -> dict[str, Any]:
    """The whole state document (``{data_url: entry}``); empty when nothing was seen yet.

    Raises:
        ValueError: When the state file exists but is not a JSON object (it is left untouched).
    """
    url = state_url(settings)
    if not storage.exists(url, settings):
        return {}
    raw = storage.read_bytes(url, settings)
    try:
        state = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"watchdog state {url} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(state, dict):
        raise ValueError(f"watchdog state {url} must be a JSON object, got {type(state).__name__}")  # noqa: TRY004
    return state


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


def check_sources(settings: Settings, data_url: str | None = None) -> dict[str, Any]:
    """Compare the sources' fingerprints with the last ones seen (nothing is written).

    Args:
        settings: Platform settings (storage root of the state).
        data_url: Location of the five CSVs; default :func:`watched_data_url`.

    Returns:
        ``changed`` (bool), ``changed_files`` (new or modified names), ``missing``, ``first_seen``,
        ``data_version``, ``previous_data_version`` and ``entry`` (the state entry to commit).
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
    }
    if scan["missing"]:
        log.warning("churn sources under %s are incomplete: missing %s", data_url, scan["missing"])
        return {**result, "changed": False, "changed_files": [], "data_version": None, "entry": None}
    before = (previous or {}).get("files", {})
    changed_files = sorted(n for n, e in scan["files"].items()
                           if before.get(n, {}).get("sha256") != e["sha256"])
    version = data_version_of(scan["files"])
    entry = {
        "files": scan["files"],
        "data_version": version,
        "checked_at": now,
        "changed_at": now if changed_files else (previous or {}).get("changed_at"),
    }
    return {**result, "changed": bool(changed_files), "changed_files": changed_files, "data_version": version,
            "entry": entry}


def commit(settings: Settings, check: dict[str, Any]) -> None:
    """Record the fingerprints of a :func:`check_sources` result as the last seen ones."""
    if check.get("entry") is None:
        return
    state = load_state(settings)
    state[check["data_url"]] = check["entry"]
    storage.write_text(state_url(settings), json.dumps(state, indent=2, sort_keys=True), settings)


def watch(settings: Settings, data_url: str | None = None) -> dict[str, Any]:
    """Check and commit in one call (CLI and demo use); return the check without the state entry."""
    check = check_sources(settings, data_url)
    commit(settings, check)
    return {k: v for k, v in check.items() if k != "entry"}
