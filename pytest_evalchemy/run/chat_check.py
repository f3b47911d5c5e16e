"""The chat part of the endpoint check: is there a chat template, does the chat endpoint
answer, does the model think? And the refusals that follow, before any item runs.
Imports no pytest and no lm-eval."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import requests

from ..core.endpoint import Endpoint
from ..core.errors import EndpointError
from ..core.record import EndpointCheckRecord
from ..core.redact import redact_url
from .endpoint import (
    CHECK_PATIENCE_S,
    EndpointInfo,
    _check_prompt_logprobs,
    measure_canary,
    session_for,
)
from .patience import Outage
from .reasoning import DEFAULT_THINK_END, reasoning_in_chat_answer

# The reasoning probe: short, and enough tokens for a thinking model to open its thinking.
PROBE_MESSAGES = [{"role": "user", "content": "What is 2 + 3? Answer with the number."}]
PROBE_MAX_TOKENS = 64


def _endpoint_of(info: EndpointInfo) -> Endpoint:
    """The URLs of what the check found (the chat URL given, else the completions URL)."""
    return Endpoint(info.chat_url or info.url)


def inspect_chat(
    info: EndpointInfo,
    endpoint: Endpoint,
    *,
    probe_chat: bool,
    timeout: float = 30.0,
    think_end_token: str = DEFAULT_THINK_END,
    loglikelihood: bool = False,
) -> EndpointInfo:
    """``info`` with what the server says about chat: its template (``/tokenizer_info``),
    whether ``/v1/completions`` is served (when the user gave a chat URL), and, when
    ``probe_chat``, one short chat request: reachable, and thinking or not. Behind a chat
    URL the completions endpoint gets the prompt-logprob check when ``loglikelihood`` items
    will use it. ``endpoint`` is the one checked (its auth and TLS)."""
    session = session_for(endpoint)
    found: dict[str, Any] = {"chat_template": False}
    try:
        resp = session.get(endpoint.tokenizer_info_url, timeout=timeout)
        if resp.status_code == 200:
            found["chat_template"] = bool(resp.json().get("chat_template"))
    except (requests.RequestException, ValueError, AttributeError):
        pass
    if info.chat_url is not None:
        # The logprob check was skipped for a chat URL: is there a completions endpoint at all?
        try:
            resp = session.post(
                info.url,
                json={"model": info.model, "prompt": "Hi", "max_tokens": 1},
                timeout=timeout,
            )
            found["completions"] = resp.status_code not in (404, 405)
        except requests.RequestException:
            found["completions"] = False
        if found["completions"] and loglikelihood:
            outage = Outage(CHECK_PATIENCE_S)
            _check_prompt_logprobs(session, info.url, info.model, timeout, outage=outage)
            if info.canary is None:  # not measured yet: check_endpoint skipped the logprobs
                found["canary"] = measure_canary(
                    session, info.url, info.model, timeout, outage=outage
                )
    if probe_chat or info.chat_url is not None:
        body = {
            "model": info.model,
            "messages": PROBE_MESSAGES,
            "max_tokens": PROBE_MAX_TOKENS,
            "temperature": 0,
        }
        try:
            resp = session.post(endpoint.chat_completions_url, json=body, timeout=timeout)
            found["chat_reachable"] = resp.status_code == 200
            how = reasoning_in_chat_answer(resp.json(), think_end_token) if resp.ok else None
        except (requests.RequestException, ValueError):
            found["chat_reachable"] = False
            how = None
        found["reasoning"] = how is not None
        found["reasoning_how"] = how
    return replace(info, **found)


def endpoint_findings(info: EndpointInfo) -> EndpointCheckRecord:
    """What the check found, for the summary's header."""
    return {
        "chat_template": info.chat_template,
        "chat_endpoint": redact_url(_endpoint_of(info).chat_completions_url)
        if info.chat_reachable
        else None,
        "chat_reachable": info.chat_reachable,
        "completions": info.completions,
        "reasoning": info.reasoning,
        "reasoning_how": info.reasoning_how,
        "canary": info.canary.to_record() if info.canary else None,
    }


def describe(info: EndpointInfo) -> str:
    """One line for the run's header."""
    parts = []
    if info.chat_template is not None:
        parts.append(
            "chat template: served" if info.chat_template else "chat template: none served"
        )
    if info.chat_reachable is not None:
        parts.append(
            "chat endpoint: reachable" if info.chat_reachable else "chat endpoint: not reachable"
        )
        parts.append(
            f"reasoning: detected ({info.reasoning_how})"
            if info.reasoning
            else "reasoning: not detected"
        )
    if info.chat_url is not None:
        parts.append(
            "generation tasks through /v1/chat/completions, loglikelihood tasks through "
            "/v1/completions with the chat template applied"
            if info.completions
            else "generation tasks through /v1/chat/completions (no /v1/completions served)"
        )
    return "; ".join(parts)


def refuse_unusable(
    info: EndpointInfo,
    *,
    template_keys: Iterable[str],
    loglikelihood_keys: Iterable[str],
) -> None:
    """Raise ``EndpointError`` (with the fix) when the items cannot run on this server:
    a chat template asked for and none served, loglikelihood items on a chat-only server, a
    chat URL that does not answer."""
    template_keys, loglikelihood_keys = list(template_keys), list(loglikelihood_keys)
    where = redact_url(info.url)
    if info.chat_url is not None and not info.chat_reachable:
        raise EndpointError(
            f"{redact_url(info.chat_url)} does not answer chat requests; check the URL, or start "
            "vLLM on a model with a chat template (--chat-template FILE)"
        )
    if info.chat_url is not None and not info.completions and loglikelihood_keys:
        raise EndpointError(
            f"{where} is not served, and loglikelihood (multiple-choice) tasks need it: "
            f"{', '.join(loglikelihood_keys)}. A chat endpoint gives no prompt logprobs; use a "
            "vLLM server (it serves both) or disable those tasks"
        )
    if template_keys and not info.chat_template:
        raise EndpointError(
            f"apply_chat_template is on for {', '.join(template_keys)}, but "
            f"{redact_url(_endpoint_of(info).tokenizer_info_url)} serves no chat template. Start "
            "vLLM with --chat-template FILE (and --enable-tokenizer-info-endpoint), serve a model "
            "whose tokenizer has one, pass --evalchemy-tokenizer with a local tokenizer that has "
            "one, or turn apply_chat_template off (--evalchemy-chat-template=false)"
        )
