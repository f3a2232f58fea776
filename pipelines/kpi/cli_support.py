"""Helpers shared by the CLI modules: one JSON summary line on stdout, a non-zero exit on failure."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer

from kpi.redaction import install_log_scrubbing, scrub


def _default(o: Any) -> Any:
    if isinstance(o, (dt.date, dt.datetime)):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    return str(o)


def emit(summary: dict) -> None:
    """Print ``summary`` as the last line of stdout, as one JSON object (known secrets scrubbed)."""
    sys.stdout.flush()
    print(scrub(json.dumps(summary, default=_default, sort_keys=False)), flush=True)


def json_command(fn: Callable[..., dict]) -> Callable[..., None]:
    """Wrap a command body that returns a summary dict: print it; on error print ``ok: false`` and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        install_log_scrubbing()
        try:
            summary = fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI boundary turns every failure into an exit code
            # third-party messages may carry a credential (MLflow names its whole URL): scrub known secrets
            if "--debug" in sys.argv or os.environ.get("KPI_DEBUG"):
                print(scrub(traceback.format_exc()), file=sys.stderr, end="")
            message = scrub(str(exc))
            print(f"error: {message}", file=sys.stderr)
            emit({"ok": False, "error": message, "error_type": type(exc).__name__})
            raise typer.Exit(code=1) from None
        summary = {"ok": True, **(summary or {})}
        emit(summary)
        if summary.get("ok") is False:
            raise typer.Exit(code=1)

    return wrapper


def parse_date(value: str, name: str = "--date") -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{name} must be YYYY-MM-DD, got {value!r}") from None
