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
