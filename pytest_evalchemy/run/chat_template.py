"""Rendering a served model's chat template the way Hugging Face ``transformers`` does.

lm-eval's ``--apply_chat_template`` with a local tokenizer renders the template with
``tokenizer.apply_chat_template(..., tokenize=False)`` and then tokenizes the string. vLLM's
``/tokenizer_info`` hands out the same template text, so the plugin renders it here and
tokenizes the result with the server's ``/tokenize``: the same string gives the same ids.

lm-eval's own remote path (``RemoteTokenizer.apply_chat_template``) renders differently, and
scores would differ: its Jinja environment has no ``trim_blocks``/``lstrip_blocks``, keeps
the trailing newline, leaves ``bos_token`` and the other special tokens undefined (an error
under its ``StrictUndefined``, an empty string elsewhere) and knows neither
``continue_final_message`` nor ``raise_exception``. This module copies transformers'
environment (``utils/chat_template_utils.py``) instead. Imports neither pytest nor lm-eval;
jinja2 (a dependency of lm-eval) is imported when a template is first rendered.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

# The special tokens transformers passes to every template (``special_tokens_map``).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# transformers' marker for continue_final_message: rendered after the final message's text,
# then cut off with everything after it.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(ValueError):
    """The template cannot be used as asked; the message says why."""


def _token_text(value: Any) -> str | None:
    # vLLM serialises an AddedToken as {"content": "<s>", ...}; a plain string otherwise.
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens(tokenizer_info: Mapping[str, Any]) -> dict[str, Any]:
    """The template variables transformers derives from the tokenizer: each special token's
    text, and ``additional_special_tokens``."""
    out: dict[str, Any] = {}
    for name in SPECIAL_TOKEN_NAMES:
        text = _token_text(tokenizer_info.get(name))
        if text is not None:
            out[name] = text
    extra = tokenizer_info.get("additional_special_tokens")
    if isinstance(extra, list):
        out["additional_special_tokens"] = [t for t in map(_token_text, extra) if t is not None]
    return out


def select_template(template: Any, name: bool | str | None) -> str:
    """The template text to use, by lm-eval's rule (``TemplateLM.chat_template``): a dict of
    named templates gives the one ``name`` picks (or ``"default"``); a single template is used
    whatever the name."""
    if isinstance(template, Mapping):
        if isinstance(name, str):
            if name not in template:
                raise ChatTemplateError(
                    f"the server has no chat template named {name!r}; it has: "
                    f"{', '.join(sorted(template))}"
                )
            return str(template[name])
        if "default" in template:
            return str(template["default"])
        raise ChatTemplateError(
            "the server has several chat templates and none is called 'default'; name one: "
            f"{', '.join(sorted(template))}"
        )
    if isinstance(template, list):  # transformers' list form: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        return select_template(named, name)
    if not isinstance(template, str) or not template:
        raise ChatTemplateError("the server has no chat template")
    return template


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # transformers replaces Jinja's tojson, which escapes HTML characters.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class _Generation(jinja2.ext.Extension):
        # transformers' {% generation %} block (assistant-token masks): renders its body.
        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(
                lineno
            )

        def _render(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template does not parse: {exc}") from None


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tokens: Mapping[str, Any] | None = None,
) -> str:
    """``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` of transformers."""
    chat = [dict(m) for m in messages]
    final = ""
    if continue_final_message:
        if not chat or not isinstance(chat[-1].get("content"), str):
            raise ChatTemplateError("continue_final_message needs a final message with text")
        final = chat[-1]["content"]
        chat[-1]["content"] = final + _CONTINUE_TAG
    text = _compiled(template).render(
        messages=chat,
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **(tokens or {}),
    )
    if continue_final_message:
        if final.strip() not in text or _CONTINUE_TAG.strip() not in text:
            raise ChatTemplateError(
                "the chat template drops part of the final message; it cannot be continued"
            )
        at = text.rindex(_CONTINUE_TAG.strip())
        if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            text = text[:at]
        else:  # the template trimmed the message's trailing space
            text = text[:at].rstrip()
    return text
