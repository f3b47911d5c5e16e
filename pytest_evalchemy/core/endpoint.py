"""An endpoint as one value: what the user typed, normalized once when the options are
resolved, with its credentials, API key and TLS setting, and every URL the plugin derives from
it. The only place that cuts endpoint URLs as strings. Standard library only."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import EndpointError
from .redact import redact_url

COMPLETIONS = "/completions"
CHAT_COMPLETIONS = "/chat/completions"
# What vllm-router polls on each worker (its --health-check-endpoint default).
HEALTH_PATH = "/health"


def is_chat_url(url: str) -> bool:
    """Whether ``url`` is a chat-completions endpoint."""
    return urlsplit(url).path.rstrip("/").endswith(CHAT_COMPLETIONS)


def completions_url_of(url: str) -> str:
    """The completions URL of the server behind a chat URL (or the URL itself)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith(CHAT_COMPLETIONS):
        path = path.removesuffix(CHAT_COMPLETIONS) + COMPLETIONS
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def normalize_endpoint(url: str) -> str:
    """The completions URL for what a user typed: a server root or ``/v1`` gets
    ``/v1/completions`` added; a chat URL stays as it is (generation tasks go there,
    loglikelihood tasks to the same server's ``/v1/completions``)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EndpointError(
            f"endpoint {url!r} is not an http(s) URL; expected e.g. http://localhost:8000/v1/completions"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(COMPLETIONS):
        path = f"{path}{COMPLETIONS}" if path.endswith("/v1") else f"{path}/v1{COMPLETIONS}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@``, and them as the value of an HTTP basic
    ``Authorization`` header (None when the URL has none)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    pair = f"{unquote(user)}:{unquote(password)}"
    try:
        raw = pair.encode("latin1")  # what requests and aiohttp send
    except UnicodeEncodeError:
        raw = pair.encode("utf-8")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, f"Basic {base64.b64encode(raw).decode()}"


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of the run. ``url`` is normalized (``normalize_endpoint``): the completions
    URL, or the chat URL the user gave, with the URL's credentials as typed (lm-eval's
    ``base_url`` wants them so). ``verify`` is the one TLS setting, as requests and lm-eval
    take it: True, False (``--evalchemy-insecure``) or a CA bundle's path."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    verify: bool | str = True

    @classmethod
    def parse(cls, text: str, *, api_key: str | None = None, verify: bool | str = True) -> Endpoint:
        """What a user typed (a server root, ``/v1``, a completions or chat URL); raises
        ``EndpointError`` for what is no http(s) URL."""
        return cls(normalize_endpoint(text), api_key, verify)

    def at(self, url: str) -> Endpoint:
        """Another endpoint (a server or router started here) with this one's API key and TLS."""
        return replace(self, url=normalize_endpoint(url))

    @property
    def completions_url(self) -> str:
        """Where completions go: ``url``, or the completions URL of the server behind a chat URL."""
        return completions_url_of(self.url)

    @property
    def chat_url(self) -> str | None:
        """The chat URL the user gave (generation items go there), else None."""
        return self.url if is_chat_url(self.url) else None

    @property
    def chat_completions_url(self) -> str:
        """The chat URL given, else the one beside the completions URL."""
        return self.chat_url or self.completions_url.removesuffix(COMPLETIONS) + CHAT_COMPLETIONS

    @property
    def root(self) -> str:
        """Where vLLM serves ``/tokenizer_info``, ``/tokenize`` and ``/health`` (lm-eval's rule)."""
        return self.completions_url.split("/v1" + COMPLETIONS, 1)[0].rstrip("/")

    @property
    def models_url(self) -> str:
        """``.../v1/completions`` -> ``.../v1/models``."""
        return self.completions_url.rsplit(COMPLETIONS, 1)[0] + "/models"

    @property
    def tokenizer_info_url(self) -> str:
        return f"{self.root}/tokenizer_info"

    @property
    def tokenize_url(self) -> str:
        return f"{self.root}/tokenize"

    @property
    def health_url(self) -> str:
        return self.root + HEALTH_PATH

    @property
    def redacted(self) -> str:
        """``url`` without credentials or query string: safe in logs, results and messages."""
        return redact_url(self.url)

    @property
    def basic_auth(self) -> str | None:
        """The URL's ``user:password`` as a basic ``Authorization`` value (None without)."""
        return split_credentials(self.url)[1]

    @property
    def headers(self) -> dict[str, str]:
        """The one ``Authorization`` header: an API key given explicitly wins (``Bearer``) and
        the URL's credentials are then not sent at all; without one, the URL's
        ``user:password`` become basic auth."""
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        basic = self.basic_auth
        return {"Authorization": basic} if basic else {}


def parse_endpoints(
    value: str | None, *, api_key: str | None = None, verify: bool | str = True
) -> tuple[Endpoint, ...]:
    """Endpoints from a comma- or space-separated value, normalized, duplicates dropped."""
    out: list[Endpoint] = []
    for part in (value or "").replace(",", " ").split():
        endpoint = Endpoint.parse(part, api_key=api_key, verify=verify)
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out)


def urls_of(endpoints: Iterable[Endpoint]) -> list[str]:
    """The endpoints' URLs (with their credentials: for scrubbing, never for showing)."""
    return [e.url for e in endpoints]
