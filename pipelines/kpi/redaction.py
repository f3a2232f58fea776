"""Keeping credentials out of what the platform prints: typed secrets, redacted URLs, scrubbed text.

Three layers, each catching what the one before cannot:

1. :class:`SecretUrl` and pydantic's ``SecretStr`` type the secret settings, so a ``repr()`` of the settings,
   a log line or a JSON dump shows ``***`` instead of the value (the URL keeps its host: useful in messages).
2. :func:`redact_url` for messages that name a store (``the warehouse at postgresql://kpi:***@db/kpi ...``).
3. :func:`scrub`, applied by the CLI to its error output and to every log record of the process
   (:func:`install_log_scrubbing`): any known secret value that a third-party message carries anyway
   (MLflow puts its whole tracking URL in errors, pydantic its input) is replaced by ``***``.

Importing this module has no side effects.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr

MASK = "***"
# query parameters that carry credentials in libpq, SQLAlchemy and HTTP URLs
SECRET_QUERY_KEYS = {"password", "sslpassword", "pass", "pwd", "secret", "token", "access_token",
                     "secret_key", "aws_secret_access_key", "x-amz-security-token", "x-amz-signature"}
# environment variables whose whole value is a secret (not AWS_ACCESS_KEY_ID: an identifier, not a proof,
# and often a short word such as a user name that scrubbing would mask in unrelated paths)
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD",
                   "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AIRFLOW__API_AUTH__JWT_SECRET")
# environment variables that hold URLs whose password is a secret
SECRET_URL_ENV_VARS = ("KPI_DATABASE_URL", "MLFLOW_TRACKING_URI", "KPI_MLFLOW_TRACKING_URI",
                       "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
# shorter values are not scrubbed from free text: masking every "ab" would garble the output
MIN_SCRUB_LENGTH = 4


def redact_url(url: str | SecretStr) -> str:
    """``url`` with the password of its user part and credential query parameters replaced by ``***``.

    Args:
        url: any URL or plain text; what does not parse as a URL with credentials is returned unchanged.

    Returns:
        The URL safe to print, e.g. ``postgresql://kpi:***@db:5432/kpi`` (a URL without a password keeps
        its user: ``postgresql://postgres@127.0.0.1/kpi``).
    """
    url = reveal(url) or ""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unparsable port or netloc: mask everything between :// and the last @
        scheme, rest = url.split("://", 1)
        if "@" not in rest:
            return url
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:{MASK}@{host}"
    out = url
    if password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        out = out.replace(parts.netloc, f"{user}:{MASK}@{hostinfo}", 1)
    if parts.query:
        pairs = parts.query.split("&")
        masked = [f"{p.split('=', 1)[0]}={MASK}" if "=" in p and unquote(p.split("=", 1)[0]).lower()
                  in SECRET_QUERY_KEYS else p for p in pairs]
        if masked != pairs:
            out = out.replace("?" + parts.query, "?" + "&".join(masked), 1)
    return out


class SecretUrl(SecretStr):
    """A URL that may carry a password: shown redacted (host and user kept), the full value on request.

    ``str()``, ``repr()`` and pydantic's JSON dump show :func:`redact_url` of the value;
    ``get_secret_value()`` returns it whole, for the code that connects.
    """

    def _display(self) -> str:
        return redact_url(self.get_secret_value())


def reveal(value: SecretStr | str | None) -> str | None:
    """The plain value of a secret setting (``None`` stays ``None``); for code that connects."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def url_secrets(url: str | None) -> list[str]:
    """The secrets a URL carries (decoded): its password and credential query parameters."""
    if not url or "://" not in url:
        return []
    found = []
    try:
        parts = urlsplit(url)
        password, query = parts.password, parts.query
    except ValueError:
        rest = url.split("://", 1)[1]
        creds = rest.rsplit("@", 1)[0] if "@" in rest else ""
        password, query = (creds.split(":", 1)[1] if ":" in creds else None), ""
    if password:
        found.append(unquote(password))
    for pair in query.split("&") if query else []:
        key, _, value = pair.partition("=")
        if value and unquote(key).lower() in SECRET_QUERY_KEYS:
            found.append(unquote(value))
    return found


def secret_values(environ: Mapping[str, str] | None = None, extra: Iterable[str | SecretStr | None] = ()
                  ) -> list[str]:
    """Every secret value this process knows of, longest first: for :func:`scrub`.

    Args:
        environ: where to read the secrets (default ``os.environ``): the AWS keys, tokens, and the
            passwords of the database, MLflow and Airflow URLs.
        extra: more secrets (plain or ``SecretStr``), e.g. a password generated in this process.
    """
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name in SECRET_ENV_VARS:
        if environ.get(name):
            found.add(environ[name])
    for name in SECRET_URL_ENV_VARS:
        found.update(url_secrets(environ.get(name)))
    for value in extra:
        plain = reveal(value)
        if plain:
            found.update(url_secrets(plain) if "://" in plain else [plain])
    variants = set()
    for value in found:
        variants |= {value, quote(value, safe=""), quote(value, safe="/")}
    return sorted((v for v in variants if len(v) >= MIN_SCRUB_LENGTH), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every known secret value (see :func:`secret_values`) replaced by ``***``."""
    for value in secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text


_installed = False


def install_log_scrubbing() -> None:
    """Scrub the secrets of the environment from every log record created from now on in this process.

    A record factory rather than a handler filter: it applies to every logger and handler, including
    those that libraries (Airflow, MLflow, botocore) add later. The secrets are read once, here.
    """
    global _installed
    if _installed:
        return
    secrets = secret_values()
    if not secrets:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return record
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            # formatters reuse exc_text when it is set: the traceback is scrubbed once, here
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = scrub(text, secrets)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
