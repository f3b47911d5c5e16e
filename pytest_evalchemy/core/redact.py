"""Secrets kept out of everything a run writes or prints: the forms an endpoint URL's
credentials and an API key take in text, ``scrub`` for a string, and ``redact_logging`` for
every log record of the process (lm-eval's, the plugin's, asyncio's), whichever handler
writes it: the item's lm-eval log, pytest's captured logs (terminal, JUnit XML), its live
log and ``--log-file``, or Python's last-resort stderr handler."""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

# A shorter password alone would blank out ordinary words; the ``user:pass@`` and base64
# forms still cover it.
MIN_PLAIN = 4
MASK = "***"
_HEX = re.compile(r"%[0-9A-F]{2}")


def redact_url(url: str) -> str:
    """The URL without credentials or query string, safe to write into logs and results."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def credential_forms(url: str | None) -> tuple[str, ...]:
    """The forms ``url``'s ``user:password`` can take in text: ``user:pass@`` as typed and
    as an HTTP client re-quotes it (messages quote the whole URL), the password typed,
    unquoted and re-quoted, and the base64 of a basic-auth header (a dump of a request's
    headers), so that they can be scrubbed from what is written."""
    if not url:
        return ()
    userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    if not at:
        return ()
    user, _, password = userinfo.partition(":")
    plain_user, plain_password = unquote(user), unquote(password)
    requoted = quote(plain_password, safe="")
    found = [f"{userinfo}@", f"{quote(plain_user, safe='')}:{requoted}@"]
    pairs = {f"{plain_user}:{plain_password}", userinfo}  # what a basic-auth header encodes
    if not password:  # a token given as the user name: the user name is the secret
        password, plain_password = user, plain_user
        requoted = quote(plain_user, safe="")
    for text in (password, plain_password, requoted, _HEX.sub(lambda m: m[0].lower(), requoted)):
        if len(text) >= MIN_PLAIN:
            found.append(text)
    for pair in pairs:
        for encoding in ("latin1", "utf-8"):  # requests and aiohttp send latin-1
            try:
                found.append(base64.b64encode(pair.encode(encoding)).decode())
            except UnicodeEncodeError:
                continue
    return _ordered(found)


def secrets_of(urls: Iterable[str | None], api_key: str | None) -> tuple[str, ...]:
    """What must never be written: the API key and the credentials of ``urls``."""
    found = [form for url in urls for form in credential_forms(url)]
    if api_key:
        found.append(api_key)
    return _ordered(found)


def _ordered(found: Iterable[str]) -> tuple[str, ...]:
    # The ``user:pass@`` forms go first (they hold the password), then the longest.
    unique = {s for s in found if s}
    return tuple(sorted(unique, key=lambda s: (not s.endswith("@"), -len(s), s)))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without ``secrets``: a URL's ``user:pass@`` goes (the URL stays readable),
    anything else becomes ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "" if secret.endswith("@") else MASK)
    return text


class Redactor(logging.Filter):
    """A handler filter that scrubs a record's message, traceback and stack before the
    handler formats it. The record is changed in place, so every later handler sees it
    scrubbed too."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.secrets = _ordered(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            self.secrets = _ordered([*self.secrets, *secrets])

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: the handler reports them as logging does
            return True
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            # What the formatter would write; it reuses exc_text once set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, secrets)
        return True


# One per process: a record logged when an item's block has ended (an asyncio task's error
# collected later, at exit) is still scrubbed, so the filter stays on the handlers.
REDACTOR = Redactor()


def redact_logging(secrets: tuple[str, ...]) -> None:
    """From now on, every handler of this process's loggers (and Python's last-resort stderr
    handler) scrubs ``secrets`` from each record it writes. Handlers added later get it from
    the next call (pytest reuses its handlers, so the ones it attaches per test phase keep it)."""
    if not secrets:
        return
    REDACTOR.add(secrets)
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    handlers = [h for lg in loggers for h in lg.handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if REDACTOR not in handler.filters:
            handler.addFilter(REDACTOR)
