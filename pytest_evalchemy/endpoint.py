"""The endpoint check: before the first item, make sure the server can be evaluated at all.

A server that answers completions but returns no prompt logprobs would make every
multiple-choice task score at chance without an error; this module refuses such a run.
Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
import urllib3

from .errors import EndpointError

DEFAULT_MAX_LENGTH = 2048


@dataclass(frozen=True)
class EndpointInfo:
    """What the check learned about the endpoint; travels to xdist workers as a dict."""

    url: str  # the completions URL lm-eval posts to
    model: str
    max_model_len: int | None
    remote_tokenizer: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "max_model_len": self.max_model_len,
            "remote_tokenizer": self.remote_tokenizer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointInfo:
        return cls(**data)


def normalize_endpoint(url: str) -> str:
    """The completions URL for what a user typed: a server root or ``/v1`` gets
    ``/v1/completions`` added; a chat URL is refused (lm-eval's loglikelihood needs completions)."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EndpointError(
            f"endpoint {url!r} is not an http(s) URL; expected e.g. http://localhost:8000/v1/completions"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        raise EndpointError(
            f"endpoint {redact_url(url)} is a chat endpoint; loglikelihood tasks need the "
            "completions endpoint: use .../v1/completions"
        )
    if not path.endswith("/completions"):
        path = f"{path}/completions" if path.endswith("/v1") else f"{path}/v1/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def redact_url(url: str) -> str:
    """The URL without credentials or query string, safe to write into logs and results."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def url_secrets(url: str) -> tuple[str, ...]:
    """The credentials of ``url`` as they can appear in text: ``user:pass@`` (messages quote
    the whole URL) and the password alone, so that they can be scrubbed from what is written."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if not at:
        return ()
    found = [f"{userinfo}@"]
    password = userinfo.partition(":")[2]
    # A very short password would blank out ordinary words; the user:pass@ form covers it.
    for text in (password, unquote(password)):
        if len(text) >= 4 and text not in found:
            found.append(text)
    return tuple(found)


def server_root(completions_url: str) -> str:
    """Where vLLM serves ``/tokenizer_info`` and ``/tokenize`` (lm-eval's rule)."""
    return completions_url.split("/v1/completions", 1)[0].rstrip("/")


def models_url(completions_url: str) -> str:
    """``.../v1/completions`` -> ``.../v1/models``."""
    return completions_url.rsplit("/completions", 1)[0] + "/models"


class _Session(requests.Session):
    """A session whose ``verify`` holds: requests lets REQUESTS_CA_BUNDLE replace a session's
    ``verify`` (even False) unless each call passes it."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("verify", self.verify)
        with warnings.catch_warnings():
            # --evalchemy-insecure warns once; urllib3 would warn on every request.
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            return super().request(*args, **kwargs)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _describe(resp: requests.Response) -> str:
    body = resp.text.strip().replace("\n", " ")
    if len(body) > 300:
        body = body[:300] + "..."
    return f"HTTP {resp.status_code}: {body or '(empty body)'}"


def _get_json(session: requests.Session, method: str, url: str, what: str, **kwargs: Any) -> Any:
    try:
        resp = session.request(method, url, **kwargs)
    except requests.exceptions.SSLError as exc:
        # Before ConnectionError, whose subclass it is: "cannot connect" would hide the cause.
        reason = str(exc.args[0] if exc.args else exc)
        reason = reason.rsplit("Caused by ", 1)[-1].rstrip(")")
        raise EndpointError(
            f"TLS error talking to {redact_url(url)}: {reason}. If the server's certificate is "
            "signed by your own CA, pass --evalchemy-ca-bundle PATH (or set REQUESTS_CA_BUNDLE); "
            "--evalchemy-insecure skips the check"
        ) from None
    except requests.ConnectionError as exc:
        raise EndpointError(
            f"cannot connect to {redact_url(url)} ({type(exc).__name__}); is the vLLM server "
            "running and is the URL right? Start it, or pass --evalchemy-endpoint"
        ) from None
    except requests.Timeout:
        raise EndpointError(
            f"{redact_url(url)} did not answer within {kwargs.get('timeout')} s"
        ) from None
    if resp.status_code in (401, 403):
        raise EndpointError(
            f"{redact_url(url)} refused the API key ({_describe(resp)}); set EVALCHEMY_API_KEY "
            "(or OPENAI_API_KEY) to the server's --api-key"
        )
    if resp.status_code == 404:
        raise EndpointError(
            f"{what}: {redact_url(url)} answered {_describe(resp)}; expected a vLLM "
            "OpenAI-compatible server (the endpoint ends in /v1/completions)"
        )
    if resp.status_code != 200:
        raise EndpointError(f"{what}: {redact_url(url)} answered {_describe(resp)}")
    try:
        return resp.json()
    except ValueError:
        raise EndpointError(
            f"{what}: {redact_url(url)} answered with a body that is not JSON: {_describe(resp)}"
        ) from None


def _served_models(data: Any, url: str) -> dict[str, int | None]:
    try:
        return {m["id"]: m.get("max_model_len") for m in data["data"]}
    except (KeyError, TypeError):
        raise EndpointError(
            f"{redact_url(url)} answered {json.dumps(data)[:200]}; expected an OpenAI model list "
            '({"data": [{"id": ...}]})'
        ) from None


def _check_prompt_logprobs(session: requests.Session, url: str, model: str, timeout: float) -> None:
    body = {
        "model": model,
        "prompt": "Hello world",
        "max_tokens": 1,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }
    data = _get_json(session, "POST", url, "one-token completion", json=body, timeout=timeout)
    try:
        logprobs = data["choices"][0]["logprobs"]
        values = logprobs["token_logprobs"]
    except (KeyError, IndexError, TypeError):
        values = None
    if not values or all(v is None for v in values[1:]) or len(values) < 2:
        raise EndpointError(
            f"{redact_url(url)} returns no prompt logprobs for echo=true, logprobs=1: "
            "multiple-choice tasks would score at chance. Use a server that supports echo with "
            "logprobs (vLLM's /v1/completions does)"
        )


def _check_remote_tokenizer(session: requests.Session, root: str, timeout: float) -> bool:
    try:
        info = session.get(f"{root}/tokenizer_info", timeout=timeout)
        tok = session.post(
            f"{root}/tokenize",
            json={"prompt": "Hello", "add_special_tokens": False},
            timeout=timeout,
        )
    except requests.RequestException:
        return False
    return (
        info.status_code == 200
        and tok.status_code == 200
        and isinstance(tok.json().get("tokens"), list)
    )


def check_endpoint(
    url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    local_tokenizer: str | None = None,
    need_tokenizer: bool = True,
    timeout: float = 30.0,
    verify: bool | str = True,
) -> EndpointInfo:
    """Check that ``url`` serves ``model`` (default: the first it lists) with prompt logprobs
    and, when ``need_tokenizer``, a tokenizer; raise ``EndpointError`` saying how to fix it.
    ``verify``: requests' TLS setting (False, or a CA bundle path)."""
    session = _Session()
    session.headers.update(_headers(api_key))
    session.verify = verify
    served = _served_models(
        _get_json(session, "GET", models_url(url), "model list", timeout=timeout), models_url(url)
    )
    if not served:
        raise EndpointError(
            f"{redact_url(models_url(url))} lists no model; is the server still loading?"
        )
    if model is None:
        model = next(iter(served))
    elif model not in served:
        raise EndpointError(
            f"model {model!r} is not served by {redact_url(url)}; it serves: {', '.join(served)}. "
            "Pass one of them with --evalchemy-model, or leave the option out to take the first"
        )
    _check_prompt_logprobs(session, url, model, timeout)
    remote = False
    if local_tokenizer is None:
        remote = _check_remote_tokenizer(session, server_root(url), timeout)
        if need_tokenizer and not remote:
            raise EndpointError(
                f"no tokenizer for {redact_url(url)}: the server has no /tokenizer_info and /tokenize "
                "endpoints, and loglikelihood (multiple-choice) tasks need a tokenizer. Start vLLM "
                "with --enable-tokenizer-info-endpoint, or pass --evalchemy-tokenizer with the "
                "model's tokenizer folder or name"
            )
    return EndpointInfo(url=url, model=model, max_model_len=served[model], remote_tokenizer=remote)


def split_endpoints(value: str | None) -> tuple[str, ...]:
    """Endpoints from a comma- or space-separated value, normalized, duplicates dropped."""
    out: list[str] = []
    for part in (value or "").replace(",", " ").split():
        url = normalize_endpoint(part)
        if url not in out:
            out.append(url)
    return tuple(out)


def check_endpoints(
    urls: tuple[str, ...], *, allow_mixed_models: bool = False, **kwargs: Any
) -> list[EndpointInfo]:
    """``check_endpoint`` on each URL; several endpoints must serve the same model (the run's
    scores would otherwise mix models) unless ``allow_mixed_models``."""
    infos = [check_endpoint(url, **kwargs) for url in urls]
    models = {info.model for info in infos}
    if len(models) > 1 and not allow_mixed_models:
        served = ", ".join(f"{redact_url(i.url)} serves {i.model!r}" for i in infos)
        raise EndpointError(
            f"the endpoints serve different models ({served}); pass --evalchemy-model to pick one "
            "they all serve, or --evalchemy-allow-mixed-models if that is intended"
        )
    return infos


def pick_endpoint(infos: list[EndpointInfo], worker: int | None, position: int) -> EndpointInfo:
    """The endpoint of an item: each xdist worker keeps to one endpoint (worker N takes endpoint
    N mod count); without xdist items take turns by their position in the run. Used only where
    no router can stand in front of the endpoints: vllm-router is not installed, or the
    endpoints serve different models (--evalchemy-allow-mixed-models), which must not share an
    item."""
    index = worker if worker is not None else position
    return infos[index % len(infos)]
