"""The endpoint check: before the first item, make sure the server can be evaluated at all.

A server that answers completions but returns no prompt logprobs would make every
multiple-choice task score at chance without an error; this module refuses such a run.
Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import requests
import urllib3

from ..core.endpoint import Endpoint, split_credentials
from ..core.endpoint import completions_url_of as completions_url_of
from ..core.endpoint import is_chat_url as is_chat_url
from ..core.endpoint import normalize_endpoint as normalize_endpoint
from ..core.errors import EndpointError
from ..core.record import CanaryRecord
from ..core.redact import redact_url
from . import tokenizer_check
from .patience import (
    TRANSIENT_STATUSES,
    Backoff,
    Outage,
    OutageGaveUp,
    Transient,
    classify,
    http_answer,
)
from .tokenizer_check import TokenizerFacts

DEFAULT_MAX_LENGTH = 2048
ECHO_PROBE = "Hello world"
# Without --evalchemy-wait-for-endpoint the check still rides out a short hiccup (a 503 while
# a proxy switches over, one reset) before it calls a server unusable.
CHECK_PATIENCE_S = 5.0
PROGRESS_EVERY_S = 10.0
# The canary: one fixed, neutral text whose prompt logprobs the check records. Two runs that
# name the same model but score it differently were served different weights
# (judge/canary.py); changing the text changes its sha256, and canaries of different texts
# are never compared.
CANARY_TEXT = (
    "The library opens at nine in the morning, and the reading room on the second floor "
    "stays quiet until the afternoon."
)


@dataclass(frozen=True)
class EndpointInfo:
    """What the check learned about the endpoint; travels to xdist workers as a dict."""

    url: str  # the completions URL lm-eval posts to
    model: str
    max_model_len: int | None
    remote_tokenizer: bool
    # What chat_check found (None: not looked at). chat_url: the user gave a chat endpoint;
    # generation tasks go there.
    chat_url: str | None = None
    chat_template: bool | None = None  # /tokenizer_info has a template
    chat_reachable: bool | None = None  # /v1/chat/completions answered
    reasoning: bool = False  # thinking seen in the probe's chat answer
    reasoning_how: str | None = None  # "reasoning field", "<think> in the content"
    completions: bool = True  # False: /v1/completions is not served (a chat-only server)
    tokenizer: TokenizerFacts | None = None  # None: no tokenizer known (string prompts)
    # The canary's prompt logprobs; None when the check sent no logprob request.
    canary: Canary | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointInfo:
        facts, canary = data.get("tokenizer"), data.get("canary")
        return cls(
            **{
                **data,
                "tokenizer": TokenizerFacts.from_dict(facts) if facts else None,
                "canary": Canary(**canary) if canary else None,
            }
        )


@dataclass(frozen=True)
class Canary:
    """``CANARY_TEXT`` as the endpoint scored it: the summary's ``endpoint_check.canary``."""

    tokens: int  # prompt logprobs summed
    logprob_sum: float
    text_sha256: str

    def to_record(self) -> CanaryRecord:
        return {
            "tokens": self.tokens,
            "logprob_sum": self.logprob_sum,
            "text_sha256": self.text_sha256,
        }


def authorization(url: str, api_key: str | None) -> tuple[str, dict[str, str]]:
    """Where to send a request for ``url`` and its one ``Authorization`` header
    (``Endpoint.headers``). The URL returned never holds credentials: aiohttp refuses them
    next to an Authorization header, and requests would send them over it."""
    return split_credentials(url)[0], Endpoint(url, api_key).headers


def unsent_credentials(endpoints: tuple[Endpoint, ...]) -> str | None:
    """The warning for an API key given with endpoint URLs that carry credentials: one
    Authorization header is sent, the key's (``Endpoint.headers``)."""
    shown = [e.redacted for e in endpoints if e.basic_auth]
    if not shown or not any(e.api_key for e in endpoints):
        return None
    return (
        f"endpoint {', '.join(shown)}: the URL's user:password are not sent, the API key is "
        "(Authorization: Bearer, from EVALCHEMY_API_KEY or OPENAI_API_KEY); drop one of them"
    )


class _Session(requests.Session):
    """A session whose ``verify`` holds (requests lets REQUESTS_CA_BUNDLE replace a session's
    ``verify``, even False, unless each call passes it) and whose URLs' credentials become
    one Authorization header (``authorization``)."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url, basic = split_credentials(url)
        if basic and "Authorization" not in self.headers:  # the API key's header wins
            kwargs["headers"] = {"Authorization": basic, **(kwargs.get("headers") or {})}
        kwargs.setdefault("verify", self.verify)
        with warnings.catch_warnings():
            # --evalchemy-insecure warns once; urllib3 would warn on every request.
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            return super().request(method, url, *args, **kwargs)


def session_for(endpoint: Endpoint) -> requests.Session:
    """A session with ``endpoint``'s API key and TLS setting (its URLs' credentials are
    added per request)."""
    session = _Session()
    if endpoint.api_key:
        session.headers.update(endpoint.headers)
    session.verify = endpoint.verify
    return session


def _describe(resp: requests.Response) -> str:
    return http_answer(resp.status_code, resp.text)


def _get_json(
    session: requests.Session,
    method: str,
    url: str,
    what: str,
    outage: Outage,
    on_wait: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Any:
    """The JSON answer of one check request. Transient failures (refused, reset, 5xx, 429,
    a truncated or garbled body) are asked again, with back-off and ``Retry-After`` honoured,
    until ``outage``'s window is spent; every failure becomes an ``EndpointError``."""
    waits = _WaitLog(redact_url(url), outage, on_wait)

    def attempt() -> tuple[requests.Response, Any]:
        resp = session.request(method, url, **kwargs)
        if resp.status_code in TRANSIENT_STATUSES:
            resp.raise_for_status()
        # Reading the JSON here makes a garbled body transient too (asked again).
        return resp, (resp.json() if resp.status_code == 200 else None)

    try:
        resp, data = outage.call(waits.wrap(attempt))
    except OutageGaveUp as exc:
        cause = exc.__cause__
        if isinstance(cause, requests.HTTPError) and cause.response is not None:
            said = f"answered {_describe(cause.response)}"
        elif isinstance(cause, requests.ConnectionError) and waits.last == "connection refused":
            raise EndpointError(
                f"cannot connect to {redact_url(url)} (ConnectionError: connection refused, "
                f"for {outage.away_for():.0f} s); is the vLLM server running and is the URL "
                "right? Start it, or pass --evalchemy-endpoint; a server that is still starting: "
                "--evalchemy-wait-for-endpoint SECONDS"
            ) from None
        else:
            said = f"failed: {waits.last} ({type(cause).__name__})"
        raise EndpointError(
            f"{what}: {redact_url(url)} {said}, still after {outage.away_for():.0f} s of "
            "retries; a server that is starting or overloaded: --evalchemy-wait-for-endpoint "
            "SECONDS waits longer"
        ) from None
    except requests.exceptions.SSLError as exc:
        # Before ConnectionError, whose subclass it is: "cannot connect" would hide the cause.
        reason = str(exc.args[0] if exc.args else exc)
        reason = reason.rsplit("Caused by ", 1)[-1].rstrip(")")
        raise EndpointError(
            f"TLS error talking to {redact_url(url)}: {reason}. If the server's certificate is "
            "signed by your own CA, pass --evalchemy-ca-bundle PATH (or set REQUESTS_CA_BUNDLE); "
            "--evalchemy-insecure skips the check"
        ) from None
    except requests.HTTPError as exc:
        # A transient status with no window left to wait (--evalchemy-wait-for-endpoint 0).
        resp, data = exc.response, None
    except requests.ConnectionError:
        raise EndpointError(
            f"cannot connect to {redact_url(url)} (ConnectionError); is the vLLM server "
            "running and is the URL right? Start it, or pass --evalchemy-endpoint"
        ) from None
    except requests.Timeout:
        raise EndpointError(
            f"{redact_url(url)} did not answer within {kwargs.get('timeout')} s"
        ) from None
    except requests.RequestException as exc:
        # Whatever else requests raises (an invalid URL, too many redirects): one line, no
        # traceback.
        raise EndpointError(
            f"{what}: request to {redact_url(url)} failed: {type(exc).__name__}: {exc}"
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
    return data


class _WaitLog:
    """Says, at most every ``PROGRESS_EVERY_S``, that the check is waiting for the server."""

    def __init__(self, url: str, outage: Outage, on_wait: Callable[[str], None] | None) -> None:
        self.url = url
        self.outage = outage
        self.on_wait = on_wait
        self.last = ""
        self._said = -PROGRESS_EVERY_S

    def wrap(self, attempt: Callable[[], Any]) -> Callable[[], Any]:
        def logged() -> Any:
            try:
                return attempt()
            except Exception as exc:
                failure = classify(exc)
                if failure is not None:
                    self.last = failure.reason
                    away = self.outage.away_for()
                    if self.on_wait is not None and away - self._said >= PROGRESS_EVERY_S:
                        self._said = away
                        self.on_wait(
                            f"waiting for {self.url}: {failure.reason}; {away:.0f} s of "
                            f"{self.outage.window_s:g} s"
                        )
                raise

        return logged


def _served_models(data: Any, url: str) -> dict[str, int | None]:
    try:
        return {m["id"]: m.get("max_model_len") for m in data["data"]}
    except (KeyError, TypeError):
        raise EndpointError(
            f"{redact_url(url)} answered {json.dumps(data)[:200]}; expected an OpenAI model list "
            '({"data": [{"id": ...}]})'
        ) from None


def _check_prompt_logprobs(
    session: requests.Session,
    url: str,
    model: str,
    timeout: float,
    prompt_ids: list[int] | None = None,
    **patience: Any,
) -> None:
    """Echo logprobs must come back, one per token. With ``prompt_ids`` (the probe text's
    ids) the prompt goes as tokens, as the items send it: a server or proxy that adds a BOS to
    token prompts, or drops a token, answers one logprob too many or too few."""
    body = {
        "model": model,
        "prompt": prompt_ids if prompt_ids is not None else ECHO_PROBE,
        "max_tokens": 1,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }
    data = _get_json(
        session, "POST", url, "one-token completion", json=body, timeout=timeout, **patience
    )
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
    if prompt_ids is None:
        return
    usage = data.get("usage") if isinstance(data, dict) else None
    generated = usage.get("completion_tokens") if isinstance(usage, dict) else None
    generated = generated if isinstance(generated, int) else 1
    if len(values) != len(prompt_ids) + generated:
        raise EndpointError(
            f"{redact_url(url)} returns {len(values)} echo logprobs for a prompt of "
            f"{len(prompt_ids)} tokens and {generated} generated: one per token expected. A "
            "server that adds a BOS to token prompts, or drops a token, shifts every "
            "loglikelihood by a token. Send the run to vLLM's /v1/completions itself, or to a "
            "proxy that passes token prompts through unchanged"
        )


def measure_canary(
    session: requests.Session, url: str, model: str, timeout: float, **patience: Any
) -> Canary | None:
    """``CANARY_TEXT``'s prompt logprobs, summed (one request: echo, logprobs, no token
    generated, greedy). None when the server does not score it: the canary only informs a
    comparison of runs, so a server that cannot give it still runs."""
    body = {
        "model": model,
        "prompt": CANARY_TEXT,
        # vLLM echoes the prompt's logprobs and generates nothing for max_tokens 0, so every
        # logprob returned is the prompt's.
        "max_tokens": 0,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }
    try:
        data = _get_json(session, "POST", url, "canary", json=body, timeout=timeout, **patience)
        values = data["choices"][0]["logprobs"]["token_logprobs"]
    except (EndpointError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(values, list):
        return None
    # The first token has no logprob (nothing comes before it); a null elsewhere is no score.
    if values and values[0] is None:
        values = values[1:]
    scored = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not scored or len(scored) < len(values):
        return None
    return Canary(
        tokens=len(scored),
        logprob_sum=math.fsum(scored),
        text_sha256=hashlib.sha256(CANARY_TEXT.encode("utf-8")).hexdigest(),
    )


def _tokenizer_info(
    session: requests.Session, endpoint: Endpoint, timeout: float, outage: Outage
) -> dict[str, Any] | None:
    """vLLM's ``/tokenizer_info`` when its tokenizer endpoints answer (``/tokenize`` too);
    a 404 says no at once, a transient failure is asked again like the other check requests."""

    def answers(method: str, url: str, **kwargs: Any) -> Any:
        def attempt() -> Any:
            resp = session.request(method, url, timeout=timeout, **kwargs)
            if resp.status_code in TRANSIENT_STATUSES:
                resp.raise_for_status()
            return resp.json() if resp.status_code == 200 else None

        return outage.call(attempt)

    try:
        info = answers("GET", endpoint.tokenizer_info_url)
        tok = answers(
            "POST", endpoint.tokenize_url, json={"prompt": "Hello", "add_special_tokens": False}
        )
    except (requests.RequestException, OutageGaveUp, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(tok, dict):
        return None
    return info if isinstance(tok.get("tokens"), list) else None


def _served_tokenize(
    session: requests.Session, endpoint: Endpoint, timeout: float, outage: Outage
) -> Callable[[str, bool], list[int]]:
    """The server's ``/tokenize`` as a function of a text and ``add_special_tokens``."""

    def tokenize(text: str, add_special_tokens: bool) -> list[int]:
        body = {"prompt": text, "add_special_tokens": add_special_tokens}
        data = _get_json(
            session, "POST", endpoint.tokenize_url, "tokenize", outage, json=body, timeout=timeout
        )
        ids = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(ids, list):
            raise EndpointError(
                f"{redact_url(endpoint.tokenize_url)} answered {json.dumps(data)[:200]}; "
                'expected {"tokens": [...]} (vLLM\'s /tokenize)'
            )
        return ids

    return tokenize


def _tokenizer_facts(
    session: requests.Session,
    endpoint: Endpoint,
    info: dict[str, Any] | None,
    local_tokenizer: str | None,
    timeout: float,
    outage: Outage,
) -> tuple[TokenizerFacts | None, list[int] | None]:
    """The tokenizer's facts and the echo probe's ids: from the server's tokenizer, or from the
    local one after checking it against the server's where the server has one."""
    served = _served_tokenize(session, endpoint, timeout, outage) if info is not None else None
    if local_tokenizer is not None:
        local = tokenizer_check.load_local(local_tokenizer)
        if served is not None:
            tokenizer_check.check_local_matches(local_tokenizer, local, served)
        ids = local.encode(ECHO_PROBE, add_special_tokens=False)
        return tokenizer_check.local_facts(local), ids
    if served is None or info is None:
        return None, None
    return tokenizer_check.server_facts(info, served), served(ECHO_PROBE, False)


def _served_list(
    session: requests.Session, url: str, timeout: float, outage: Outage, **patience: Any
) -> dict[str, int | None]:
    """The served models; an empty list (vLLM still loading) is waited for like a 503."""
    backoff: Backoff | None = None
    while True:
        served = _served_models(
            _get_json(session, "GET", url, "model list", outage, timeout=timeout, **patience),
            url,
        )
        if served:
            return served
        backoff = backoff or Backoff(outage.deadline())
        delay = backoff.delay(Transient("no model listed yet"))
        if delay is None:
            raise EndpointError(
                f"{redact_url(url)} lists no model; is the server still loading? "
                "--evalchemy-wait-for-endpoint SECONDS waits for it"
            )
        time.sleep(delay)


def check_endpoint(
    endpoint: Endpoint,
    *,
    model: str | None = None,
    local_tokenizer: str | None = None,
    need_tokenizer: bool = True,
    timeout: float = 30.0,
    need_logprobs: bool = True,
    wait_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> EndpointInfo:
    """Check that ``endpoint`` serves ``model`` (default: the first it lists) with prompt
    logprobs (unless not ``need_logprobs``: a chat run without loglikelihood tasks) and, when
    ``need_tokenizer``, a tokenizer; raise ``EndpointError`` saying how to fix it. Transient
    failures are asked again for up to ``wait_s`` seconds (default ``CHECK_PATIENCE_S``), and
    ``on_wait`` hears a line of progress while the check waits."""
    url = endpoint.completions_url
    session = session_for(endpoint)
    # One window for the whole check: a server that is starting is waited for once.
    outage = Outage(CHECK_PATIENCE_S if wait_s is None else wait_s)
    served = _served_list(session, endpoint.models_url, timeout, outage, on_wait=on_wait)
    if model is None:
        model = next(iter(served))
    elif model not in served:
        raise EndpointError(
            f"model {model!r} is not served by {redact_url(url)}; it serves: {', '.join(served)}. "
            "Pass one of them with --evalchemy-model, or leave the option out to take the first"
        )
    # The tokenizer first: the echo probe then goes as token ids, as the items' prompts do.
    info = _tokenizer_info(session, endpoint, timeout, outage)
    remote = local_tokenizer is None and info is not None
    if local_tokenizer is None and need_tokenizer and not remote:
        raise EndpointError(
            f"no tokenizer for {redact_url(url)}: the server has no /tokenizer_info and /tokenize "
            "endpoints, and loglikelihood (multiple-choice) tasks need a tokenizer. Start vLLM "
            "with --enable-tokenizer-info-endpoint, or pass --evalchemy-tokenizer with the "
            "model's tokenizer folder or name"
        )
    facts, probe_ids = _tokenizer_facts(session, endpoint, info, local_tokenizer, timeout, outage)
    canary = None
    if need_logprobs:
        _check_prompt_logprobs(
            session, url, model, timeout, probe_ids, outage=outage, on_wait=on_wait
        )
        canary = measure_canary(session, url, model, timeout, outage=outage, on_wait=on_wait)
    return EndpointInfo(
        url=url,
        model=model,
        max_model_len=served[model],
        remote_tokenizer=remote,
        chat_url=endpoint.chat_url,
        tokenizer=facts,
        canary=canary,
    )


def check_endpoints(
    endpoints: tuple[Endpoint, ...], *, allow_mixed_models: bool = False, **kwargs: Any
) -> list[EndpointInfo]:
    """``check_endpoint`` on each endpoint; several endpoints must serve the same model (the
    run's scores would otherwise mix models) unless ``allow_mixed_models``."""
    infos = [check_endpoint(endpoint, **kwargs) for endpoint in endpoints]
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
