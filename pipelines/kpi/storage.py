"""Object storage through fsspec: ``file://`` on one machine, ``s3://`` (MinIO, SeaweedFS, AWS) elsewhere."""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec

from kpi.settings import Settings, get_settings


def filesystem(url: str, settings: Settings | None = None) -> tuple[Any, str]:
    """Return ``(fs, path)`` for a URL or a plain local path."""
    settings = settings or get_settings()
    fs, path = fsspec.core.url_to_fs(url, **settings.storage_options(url))
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URL parts with single slashes."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def write_bytes(url: str, data: bytes, settings: Settings | None = None) -> str:
    """Write ``data`` at ``url`` (parents created as needed); return the URL."""
    fs, path = filesystem(url, settings)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as fh:
        fh.write(data)
    return url


def write_text(url: str, text: str, settings: Settings | None = None) -> str:
    return write_bytes(url, text.encode("utf-8"), settings)


def read_bytes(url: str, settings: Settings | None = None) -> bytes:
    fs, path = filesystem(url, settings)
    with fs.open(path, "rb") as fh:
        return fh.read()


def exists(url: str, settings: Settings | None = None) -> bool:
    fs, path = filesystem(url, settings)
    return fs.exists(path)


def list_files(url: str, settings: Settings | None = None) -> list[str]:
    """Full URLs of the files directly under ``url`` (sorted); empty when it does not exist."""
    fs, path = filesystem(url, settings)
    if not fs.exists(path):
        return []
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    out = []
    for info in fs.ls(path, detail=True):
        if info.get("type") == "file":
            name = info["name"]
            out.append(f"{protocol}://{name}" if protocol != "file" else f"file://{name}")
    return sorted(out)


def content_fingerprint(url: str, settings: Settings | None = None) -> str:
    """A content identity for change detection: sha256 of the bytes (ETag is not a hash for multipart)."""
    digest = hashlib.sha256()
    fs, path = filesystem(url, settings)
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Compare-and-swap of small state objects: read with a version, write only if the version still holds.
# s3:// uses the S3 conditional headers (If-Match on the ETag read, If-None-Match: * to create), which AWS S3,
# MinIO and SeaweedFS honour atomically; file:// holds an exclusive lock on a sibling ``.lock`` file while it
# compares and renames. See docs/churn-ops.md ("Watchdog state and concurrent runs").
# --------------------------------------------------------------------------------------------------------


class WriteConflict(RuntimeError):
    """The object changed (or appeared) since it was read: a conditional write lost to another writer."""


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def _s3_client(settings: Settings):
    import boto3

    opts = settings.storage_options("s3://")
    return boto3.client("s3", endpoint_url=opts.get("client_kwargs", {}).get("endpoint_url"),
                        aws_access_key_id=opts.get("key"), aws_secret_access_key=opts.get("secret"))


def _bucket_key(url: str) -> tuple[str, str]:
    bucket, _, key = url.split("://", 1)[1].partition("/")
    return bucket, key


def _local_path(url: str) -> str:
    return fsspec.core.url_to_fs(url)[1]


def read_versioned(url: str, settings: Settings | None = None) -> tuple[bytes | None, str | None]:
    """The bytes at ``url`` and the version token to pass to :func:`write_if_unchanged`.

    Returns:
        ``(data, version)``; ``(None, None)`` when nothing is there yet.
    """
    settings = settings or get_settings()
    scheme = _scheme(url)
    if scheme == "s3":
        bucket, key = _bucket_key(url)
        client = _s3_client(settings)
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None, None
        return obj["Body"].read(), obj["ETag"]
    if scheme == "file":
        try:
            with open(_local_path(url), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()
    raise NotImplementedError(f"conditional writes are not supported on {scheme}:// ({url}); use file:// or s3://")


def write_if_unchanged(url: str, data: bytes, version: str | None, settings: Settings | None = None) -> None:
    """Write ``data`` at ``url`` only if it still holds ``version`` (None: only if nothing is there).

    Raises:
        WriteConflict: another writer changed or created the object since ``version`` was read.
    """
    settings = settings or get_settings()
    scheme = _scheme(url)
    if scheme == "s3":
        from botocore.exceptions import ClientError

        bucket, key = _bucket_key(url)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            _s3_client(settings).put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            # 412: the condition failed; 409: a concurrent conditional write won (AWS); 404: deleted meanwhile
            if error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or \
                    exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise WriteConflict(f"{url} changed since it was read ({error.get('Code')})") from None
            raise
        return
    if scheme == "file":
        _write_local_if_unchanged(_local_path(url), data, version)
        return
    raise NotImplementedError(f"conditional writes are not supported on {scheme}:// ({url}); use file:// or s3://")


def _write_local_if_unchanged(path: str, data: bytes, version: str | None) -> None:
    import fcntl
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            with open(path, "rb") as fh:
                current = hashlib.sha256(fh.read()).hexdigest()
        except FileNotFoundError:
            current = None
        if current != version:
            raise WriteConflict(f"file://{path} changed since it was read")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # readers see the old or the new document, never half of one
