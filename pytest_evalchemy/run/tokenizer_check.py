"""The tokenizer check: how the served tokenizer starts a plain text (with its BOS or not),
whether a local tokenizer agrees with the server's, and so what each item's prompts start with.

A model trained with a BOS scores prompts without it differently (up to a third of a nat per
choice on a tiny Llama, whole points of accuracy on real ones), and lm-eval's API models send
token prompts without it. The run learns the tokenizer's own convention here, before the first
item, and every loglikelihood and generation prompt follows it (``add_bos_token`` auto), as
transformers and vLLM do for a text prompt. Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import EndpointError

ADD_BOS_SETTINGS = ("auto", "true", "false")
# What a chat endpoint does with the messages, which the plugin does not tokenize.
CHAT_ENDPOINT_TOKENS = (
    "chat endpoint: the server renders the messages with its template and tokenizes them; "
    "vLLM adds no special token the template does not write (add_bos_token does not apply)"
)
# Texts whose ids a local tokenizer must share with the server's: plain words, a leading space,
# digits, punctuation, a newline and non-ASCII letters (where tokenizers and revisions differ).
PROBE_TEXTS = (
    "Hello world",
    " The answer is 42.\nQuestion: ¿Dónde está Zürich?",
)


@dataclass(frozen=True)
class TokenizerFacts:
    """What the check learned of the tokenizer; travels to xdist workers as a dict."""

    source: str  # "server" (its /tokenize) or "local" (--evalchemy-tokenizer)
    bos_token: str | None
    bos_id: int | None
    eos_token: str | None
    # A plain text tokenized with special tokens starts with exactly one BOS (Llama, Gemma,
    # Mistral); False: none (GPT-2-, Qwen-style).
    adds_bos: bool
    add_bos_token: bool | None = None  # /tokenizer_info's own word, where it says
    chat_template_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerFacts:
        return cls(**data)


def parse_add_bos(value: object) -> str:
    """``"auto"``, ``"true"`` or ``"false"`` from a config value or an option's text."""
    text = str(value).strip().lower()
    if text not in ADD_BOS_SETTINGS:
        raise ValueError(f"expected true, false or auto, got {value!r}")
    return text


def adds_bos(with_special: Sequence[int], without: Sequence[int], bos_id: int | None) -> bool:
    """Whether the ids with special tokens are the plain ids after exactly one BOS."""
    if len(with_special) != len(without) + 1 or list(with_special[1:]) != list(without):
        return False
    return bos_id is None or with_special[0] == bos_id


def template_sha256(template: Any) -> str | None:
    """The chat template's sha256 (several named templates: of their JSON, sorted)."""
    if not template:
        return None
    if not isinstance(template, str):
        import json

        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def server_facts(
    info: dict[str, Any], tokenize: Callable[[str, bool], list[int]]
) -> TokenizerFacts:
    """The served tokenizer's facts from its ``/tokenizer_info`` and ``/tokenize`` (``tokenize``
    takes a text and ``add_special_tokens``)."""
    bos = info.get("bos_token") if isinstance(info.get("bos_token"), str) else None
    bos_ids = tokenize(bos, False) if bos else []
    bos_id = bos_ids[0] if len(bos_ids) == 1 else None
    probe = PROBE_TEXTS[0]
    with_special, without = tokenize(probe, True), tokenize(probe, False)
    added = adds_bos(with_special, without, bos_id)
    if added and bos_id is None:
        bos_id = with_special[0]
    said = info.get("add_bos_token")
    return TokenizerFacts(
        source="server",
        bos_token=bos,
        bos_id=bos_id,
        eos_token=info.get("eos_token") if isinstance(info.get("eos_token"), str) else None,
        adds_bos=added,
        add_bos_token=said if isinstance(said, bool) else None,
        chat_template_sha256=template_sha256(info.get("chat_template")),
    )


def load_local(name: str) -> Any:
    """The Hugging Face tokenizer ``--evalchemy-tokenizer`` names (a folder or a hub name)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise EndpointError(
            f"--evalchemy-tokenizer {name}: a local tokenizer needs transformers; "
            "pip install 'pytest-evalchemy[hf]', or leave the option out to use the server's"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EndpointError(
            f"--evalchemy-tokenizer {name}: cannot load it ({first}); give the model's folder "
            "(with tokenizer.json or tokenizer_config.json) or a Hugging Face tokenizer name"
        ) from None


def local_facts(tokenizer: Any) -> TokenizerFacts:
    """A local Hugging Face tokenizer's facts."""
    probe = PROBE_TEXTS[0]
    bos_id = tokenizer.bos_token_id
    with_special = tokenizer.encode(probe, add_special_tokens=True)
    without = tokenizer.encode(probe, add_special_tokens=False)
    return TokenizerFacts(
        source="local",
        bos_token=tokenizer.bos_token,
        bos_id=bos_id,
        eos_token=tokenizer.eos_token,
        adds_bos=adds_bos(with_special, without, bos_id),
        add_bos_token=getattr(tokenizer, "add_bos_token", None),
        chat_template_sha256=template_sha256(getattr(tokenizer, "chat_template", None)),
    )


def check_local_matches(
    name: str, tokenizer: Any, tokenize: Callable[[str, bool], list[int]]
) -> None:
    """Refuse a local tokenizer whose ids for the probe texts differ from the server's: every
    prompt it builds would be another model's tokens."""
    for text in PROBE_TEXTS:
        local = tokenizer.encode(text, add_special_tokens=False)
        served = tokenize(text, False)
        if local != served:
            at = next(
                (i for i, (a, b) in enumerate(zip(local, served, strict=False)) if a != b),
                min(len(local), len(served)),
            )
            raise EndpointError(
                f"--evalchemy-tokenizer {name}: its ids for the probe text {text!r} differ from "
                f"the server's /tokenize from token {at} on (local {local[at : at + 4]}, server "
                f"{served[at : at + 4]}): it is another tokenizer or another revision of it. "
                "Pass the tokenizer the server loads (the model's folder or vLLM's --tokenizer), "
                "or leave --evalchemy-tokenizer out to use the server's"
            )


def resolve_add_bos(
    setting: str, facts: TokenizerFacts | None, *, templated: bool, tokenized: bool
) -> bool | None:
    """Whether an item's prompts start with the BOS; None where the plugin builds no token
    prompts (the chat endpoint, or no tokenizer: the server tokenizes the text its own way)
    or, under auto, where the tokenizer is not known (the dry run).

    auto: as the model's tokenizer starts a plain text; a chat-templated prompt carries exactly
    the special tokens its template writes (one BOS for ``{{ bos_token }}``), as transformers'
    ``apply_chat_template(tokenize=True)`` and vLLM's chat endpoint do."""
    if not tokenized:
        return None
    if setting != "auto":
        return setting == "true"
    if templated:
        return False
    return None if facts is None else facts.adds_bos


def sends(facts: TokenizerFacts | None, setting: str) -> str:
    """What the run's plain prompts will start with, in words (a task's own add_bos_token
    may differ; each item's settings say what it sent)."""
    if setting == "false":
        return "prompts start without a BOS (add_bos_token false)"
    if facts is None:
        return "the server tokenizes the prompts (no tokenizer known)"
    bos = facts.bos_token or "the BOS"
    if setting == "true":
        return f"prompts start with one {bos} (add_bos_token true)"
    if not facts.adds_bos:
        return "prompts start without a BOS, as the tokenizer starts a text"
    return (
        f"prompts start with one {bos}, as the tokenizer starts a text; chat-templated "
        "prompts carry what the template writes"
    )


def findings(facts: TokenizerFacts, setting: str) -> dict[str, Any]:
    """The summary's ``endpoint_check.tokenizer``."""
    return {**facts.to_dict(), "add_bos_setting": setting, "sends": sends(facts, setting)}


def describe(facts: TokenizerFacts, setting: str) -> str:
    """The header's line on the tokenizer and what the run's prompts start with."""
    if facts.bos_token is None:
        bos = "no BOS token"
    else:
        bos = f"BOS {facts.bos_token} ({'added to' if facts.adds_bos else 'not added to'} a text)"
    parts = [f"tokenizer ({facts.source}): {bos}", f"EOS {facts.eos_token}"]
    if facts.chat_template_sha256:
        parts.append(f"chat template sha256 {facts.chat_template_sha256[:12]}")
    return ", ".join(parts) + f"; {sends(facts, setting)}"
