"""lm-eval model pieces for instruct and reasoning models: the server's chat template on the
completions endpoint, the chat-completions model, and reasoning payloads.

- ``ServerChatTemplate``: with vLLM's remote tokenizer, lm-eval's ``local-completions`` hands a
  chat template's message list on unrendered (usable only by a chat endpoint). This renders
  the template the server serves in ``/tokenizer_info`` exactly as transformers renders a local
  tokenizer's (``chat_template.render``): the rendered string, tokenized by the server, gives
  the ids ``tokenizer_backend=huggingface`` gives.
- ``ReasoningPayload``: a reasoning model gets no stop strings (the server would apply them to
  the thinking) and ``max_gen_toks`` plus a thinking budget; ``reasoning.ThinkingFilter`` cuts
  the answer afterwards.
- ``EvalchemyChat``: lm-eval's ``local-chat-completions``, plus the above; vLLM's ``reasoning``
  field is put back in front of the content (closed by the think-end token) so that the raw
  responses keep the thinking and the filter takes it off again.

- ``CountedEnds`` (both models): each generation answer's ``finish_reason``, which lm-eval's
  ``parse_generations`` drops, counted into the policy's ``ends`` (``validity.AnswerEnds``),
  with the ``max_tokens`` the requests were sent with.
- ``UrlCredentials`` (both models): a ``base_url`` with ``user:password@`` is sent as one
  Authorization header to the URL without them.

Each reads the item's ``ModelPolicy`` (``self._policy``, set by the model's constructor before
lm-eval's runs): nothing of it is a model arg. Imports lm-eval.
"""

from __future__ import annotations

import os
from typing import Any

from lm_eval.api.registry import get_model, register_model
from lm_eval.models.openai_completions import LocalChatCompletion

from .. import chat_template
from ..endpoint import authorization, split_credentials
from ..reasoning import start_token
from . import private
from .policy import ModelPolicy
from .request_cache import QueuedCacheWrites

CHAT_MODEL_NAME = "evalchemy-chat"


class UrlCredentials:
    """lm-eval's API models with a ``base_url`` that carries ``user:password@``: aiohttp (the
    concurrent path) refuses such a URL next to lm-eval's bearer header, and requests sends
    the URL's credentials over that header. Here the URL sent holds none, and every request
    (the remote tokenizer's too) carries the one Authorization header of
    ``endpoint.authorization``: the API key (lm-eval's OPENAI_API_KEY) when given, else the
    URL's basic auth."""

    _policy: ModelPolicy

    def __init__(self, *args: Any, base_url: str | None = None, **kwargs: Any) -> None:
        key = self.api_key or None
        clean, self._auth = authorization(base_url, key) if base_url else (base_url, {})
        if key:
            # lm-eval's remote tokenizer sends the key only when given it as auth_token: the
            # tokenizer endpoints get the header the check and the completions get.
            kwargs.setdefault("auth_token", key)
        if key or clean == base_url:
            super().__init__(*args, base_url=clean, **kwargs)  # type: ignore[call-arg]
            return
        # lm-eval's constructor builds the remote tokenizer, which reads /tokenizer_info at
        # once, through requests: the URL's credentials are its only way to send basic auth.
        super().__init__(*args, base_url=base_url, **kwargs)  # type: ignore[call-arg]
        self.base_url = clean
        tokenizer = getattr(self, "tokenizer", None)
        if private.is_remote_tokenizer(tokenizer):
            tokenizer.base_url = split_credentials(tokenizer.base_url)[0]
            tokenizer.headers.update(self._auth)
            private.remote_session(tokenizer)[0].headers.update(self._auth)

    @property
    def api_key(self) -> str:
        """The item's key, else where lm-eval's local models read it (OPENAI_API_KEY)."""
        return self._policy.api_key or os.environ.get("OPENAI_API_KEY", "")

    @property
    def header(self) -> dict[str, str]:
        return {**super().header, **self._auth}  # type: ignore[misc]


class ReasoningPayload:
    """Generation payloads for a reasoning model (the policy's ``reasoning``)."""

    _policy: ModelPolicy

    def _create_payload(
        self, messages: Any, generate: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        # lm-eval's own defaults for the rest (gen_kwargs, seed, eos).
        payload: dict[str, Any] = super()._create_payload(  # type: ignore[misc]
            messages, generate=generate, **kwargs
        )
        reasoning = self._policy.reasoning
        if generate and reasoning is not None:
            # A server cuts at a stop string wherever it appears, inside the thinking too.
            payload.pop("stop", None)
            payload["max_tokens"] = int(payload["max_tokens"]) + reasoning.thinking_budget
        return payload


class CountedEnds:
    """How the server ended each generation answer, for the item's validity: each model's
    ``parse_generations``, which lm-eval calls on every answer body the server sends, calls
    ``_count_ends`` first (an answer replayed from the request cache reaches no model)."""

    _policy: ModelPolicy

    def _create_payload(
        self, messages: Any, generate: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        # lm-eval's own defaults for the rest (gen_kwargs, seed, eos).
        payload: dict[str, Any] = super()._create_payload(  # type: ignore[misc]
            messages, generate=generate, **kwargs
        )
        if generate:
            # What an answer that ran out had (a reasoning model's budget included).
            self._policy.ends.asked(payload.get("max_tokens"))
        return payload

    def _count_ends(self, outputs: Any) -> None:
        self._policy.ends.answered(outputs)


class ServerChatTemplate:
    """``apply_chat_template`` from the server's template when the tokenizer is vLLM's remote
    one (the policy's ``chat_template``: a template name, as lm-eval's flag takes)."""

    _policy: ModelPolicy

    def _server_template(self) -> tuple[str, dict[str, Any]]:
        info = self.tokenizer.tokenizer_info  # type: ignore[attr-defined]
        name = self._policy.chat_template or True
        return chat_template.select_template(info.get("chat_template"), name), info

    def _remote(self) -> bool:
        return self.tokenizer_backend == "remote" and bool(self.tokenized_requests)  # type: ignore[attr-defined]

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> Any:
        if not self._remote():
            return super().apply_chat_template(chat_history, add_generation_prompt)  # type: ignore[misc]
        template, info = self._server_template()
        # The arguments lm-eval's huggingface path gives transformers.
        return chat_template.render(
            template,
            chat_history,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
            tokens=chat_template.special_tokens(info),
        )

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not self._remote():
            return super().chat_template(chat_template)  # type: ignore[misc]
        return self._server_template()[0] if chat_template else None


class EvalchemyChat(
    QueuedCacheWrites, CountedEnds, ReasoningPayload, UrlCredentials, LocalChatCompletion
):
    """``local-chat-completions`` with reasoning payloads; the reasoning field kept, the
    finish reasons counted."""

    def __init__(self, *args: Any, policy: ModelPolicy | None = None, **kwargs: Any) -> None:
        # The harness builds the model with the item's policy (lm-eval is handed the instance).
        self._policy = policy or ModelPolicy()
        super().__init__(*args, **kwargs)

    def parse_generations(self, outputs: Any, **kwargs: Any) -> list[Any]:
        self._count_ends(outputs)
        reasoning = self._policy.reasoning
        if reasoning is None:
            return super().parse_generations(outputs, **kwargs)
        end = reasoning.think_end_token
        start = start_token(end) or ""
        res: list[Any] = []
        for out in outputs if isinstance(outputs, list) else [outputs]:
            choices = out.get("choices") if isinstance(out, dict) else None
            if not choices:
                res.append("")  # lm-eval's answer to a blocked or empty generation
                continue
            texts: list[Any] = [None] * len(choices)
            for position, choice in enumerate(choices):
                message = choice.get("message") or {}
                content = message.get("content")
                thinking = message.get("reasoning") or message.get("reasoning_content")
                if thinking:
                    # Closed when an answer followed; left open when the output ended inside.
                    closed = content is not None or choice.get("finish_reason") != "length"
                    content = (
                        f"{start}{thinking}{end}{content or ''}" if closed else start + thinking
                    )
                texts[choice.get("index", position)] = content
            res.extend(texts)
        return res


def _register(name: str, cls: type) -> None:
    try:
        register_model(name)(cls)
    except ValueError:
        # Imported again (pytester restores sys.modules after an in-process run): the class
        # an earlier import registered runs this same code; anything else is a real clash.
        existing = get_model(name)
        if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise


_register(CHAT_MODEL_NAME, EvalchemyChat)
