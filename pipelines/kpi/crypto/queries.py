"""The crypto pipeline's SQL, read from ``sql/crypto/``.

A file holds one statement (``stage_window.sql``) or several named ones, each introduced by a line
``-- name: <name>`` (``dq_runs.sql``); :func:`sql` returns ``"<file>"`` or ``"<file>:<name>"``. The stage
statement gets the rule list's reasons expression where it says ``/*REASONS*/``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from kpi.settings import Settings, get_settings

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _file(path: str) -> dict[str, str]:
    text = Path(path).read_text()
    if "/*REASONS*/" in text:
        from kpi.crypto.rules import reasons_sql

        text = text.replace("/*REASONS*/", reasons_sql())
    marks = list(_NAME.finditer(text))
    if not marks:
        return {"": text}
    return {m.group(1): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
            for i, m in enumerate(marks)}


def sql(name: str, settings: Settings | None = None) -> str:
    """The statement ``name`` (``"file"`` or ``"file:section"``) of ``<sql_dir>/crypto/``.

    Raises:
        KeyError: naming the file and the sections it has, when the section does not exist.
    """
    settings = settings or get_settings()
    file, _, section = name.partition(":")
    statements = _file(str(settings.resolved_sql_dir / "crypto" / f"{file}.sql"))
    try:
        return statements[section]
    except KeyError:
        raise KeyError(f"sql/crypto/{file}.sql has no statement {section!r} (it has {sorted(statements)})") from None
