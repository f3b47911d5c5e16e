"""The test server's chat side: the template in /tokenizer_info, messages in /tokenize,
/v1/chat/completions for every model, and the simulated reasoning model. Also that the
plugin's template rendering is transformers' own, character for character."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pytest_evalchemy.run import chat_template
from pytest_evalchemy.testing.answer_key import AnswerEntry
from pytest_evalchemy.testing.server import (
    CHAT_TEMPLATE,
    LP_AGREE,
    LP_DISAGREE,
    THINKING,
    EvalchemyTestServer,
    encode,
)

ENTRIES = [
    AnswerEntry("mc", 0, "[mc-0]", "choice", " Paris", "", True),
    AnswerEntry("mc", 1, "[mc-1]", "choice", " Rome", "", False),
    AnswerEntry("gen", 0, "[gen-0]", "generate", " 42\n", " 7\n", True),
]
USER = [{"role": "user", "content": "[gen-0] What is six times seven?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[EvalchemyTestServer]:
    with EvalchemyTestServer(ENTRIES) as srv:
        yield srv


def _chat(srv: EvalchemyTestServer, **body: Any) -> requests.Response:
    body.setdefault("model", srv.model)
    body.setdefault("messages", USER)
    return requests.post(srv.chat_completions_url, json=body, timeout=10)


def test_tokenizer_info_carries_the_chat_template(server: EvalchemyTestServer) -> None:
    info = requests.get(f"{server.url}/tokenizer_info", timeout=10).json()
    assert info["chat_template"] == CHAT_TEMPLATE
    with EvalchemyTestServer(ENTRIES, chat_template=None) as bare:
        assert "chat_template" not in requests.get(f"{bare.url}/tokenizer_info", timeout=10).json()


def test_tokenize_renders_messages(server: EvalchemyTestServer) -> None:
    r = requests.post(f"{server.url}/tokenize", json={"messages": USER}, timeout=10).json()
    rendered = "<s><|user|>\n[gen-0] What is six times seven?</s>\n<|assistant|>\n"
    # BOS comes from the template's {{ bos_token }}, not from add_special_tokens.
    assert r["tokens"] == encode(rendered)
    r = requests.post(
        f"{server.url}/tokenize",
        json={"messages": USER, "add_generation_prompt": False},
        timeout=10,
    ).json()
    assert r["tokens"] == encode(rendered.removesuffix("<|assistant|>\n"))


def test_chat_completions_for_every_model(server: EvalchemyTestServer) -> None:
    out = _chat(server, stop=["\n"]).json()
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": " 42"}
    assert requests.post(server.completions_url, json={"prompt": "x"}, timeout=10).ok


def test_chat_without_template_is_refused_like_vllm() -> None:
    with EvalchemyTestServer(ENTRIES, chat_template=None) as srv:
        r = _chat(srv)
        assert r.status_code == 400
        assert "chat template" in r.json()["error"]["message"]


def test_choice_after_the_assistant_header_scores_like_after_a_space(
    server: EvalchemyTestServer,
) -> None:
    # lm-eval drops the target delimiter under a chat template: "...<|assistant|>\nParis".
    assert server.prompt_logprob("[mc-0] Q\n<|assistant|>\nParis") == LP_AGREE
    assert server.prompt_logprob("[mc-0] Q\n<|assistant|>\nRome") == LP_DISAGREE
    assert server.prompt_logprob("[mc-0] Q Answer: Paris") == LP_AGREE
    assert server.prompt_logprob("[mc-0] Q Answer:XParis") == LP_DISAGREE


def test_reasoning_in_the_content() -> None:
    with EvalchemyTestServer(ENTRIES, reasoning="content") as srv:
        content = _chat(srv).json()["choices"][0]["message"]["content"]
        assert content == f"<think>{THINKING}</think> 42\n"
        assert "Question:" in THINKING
        assert "#### -999" in THINKING
        # A stop string applies to the whole output: it ends the answer inside the thinking.
        cut = _chat(srv, stop=["Question:"]).json()["choices"][0]
        assert cut["message"]["content"] == "<think>\nA first guess. "
        assert cut["stop_reason"] == "Question:"
        # The completions endpoint thinks the same way.
        text = requests.post(
            srv.completions_url, json={"prompt": "[gen-0] Q", "max_tokens": 500}, timeout=10
        ).json()["choices"][0]["text"]
        assert text == content


def test_reasoning_in_a_field() -> None:
    with EvalchemyTestServer(ENTRIES, reasoning="field") as srv:
        message = _chat(srv).json()["choices"][0]["message"]
        assert message == {"role": "assistant", "content": " 42\n", "reasoning": THINKING}
        cut = _chat(srv, stop=["Question:"]).json()["choices"][0]["message"]
        assert cut == {"role": "assistant", "content": None, "reasoning": "\nA first guess. "}
        # Out of tokens inside the thinking: no content either.
        short = _chat(srv, max_tokens=20).json()["choices"][0]
        assert short["message"]["content"] is None
        assert short["finish_reason"] == "length"


def test_server_rejects_an_unknown_reasoning_mode() -> None:
    with pytest.raises(ValueError, match="reasoning must be one of"):
        EvalchemyTestServer(ENTRIES, reasoning="thoughts")


# ---------------------------------------------------------------- rendering = transformers'

TEMPLATES = {
    "server": CHAT_TEMPLATE,
    # Whitespace handling (trim_blocks, lstrip_blocks), a system turn, raise_exception, tojson.
    "blocks": (
        "{% if messages[0]['role'] == 'system' %}SYS: {{ messages[0]['content'] }}\n{% endif %}\n"
        "{% for m in messages %}\n"
        "    {% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('bad role') }}{% endif %}\n"
        "    {% if m['role'] != 'system' %}[{{ m['role'] | upper }}] {{ m['content'] }}{{ eos_token }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}[ASSISTANT] {% endif %}{{ {'k': '<é>'} | tojson }}\n"
    ),
}
CHATS = {
    "one": [{"role": "user", "content": "Question: 2+2?\nAnswer:"}],
    "multiturn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": " A1"},
        {"role": "user", "content": "Q2 "},
    ],
}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("continue_final", [False, True])
def test_rendering_equals_transformers(template: str, chat: str, continue_final: bool) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    messages = CHATS[chat]
    if continue_final:
        messages = [*messages, {"role": "assistant", "content": "The answer is"}]
    (expected,), _ = render_jinja_template(
        conversations=[messages],
        chat_template=TEMPLATES[template],
        add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
        **tokens,
    )
    ours = chat_template.render(
        TEMPLATES[template],
        messages,
        add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
        tokens=tokens,
    )
    assert ours == expected


def test_template_selection_and_special_tokens() -> None:
    assert chat_template.select_template("T", True) == "T"
    assert chat_template.select_template("T", "tool_use") == "T"  # a single template: used
    named = {"default": "D", "tool_use": "U"}
    assert chat_template.select_template(named, True) == "D"
    assert chat_template.select_template(named, "tool_use") == "U"
    with pytest.raises(chat_template.ChatTemplateError, match="no chat template named 'rag'"):
        chat_template.select_template(named, "rag")
    with pytest.raises(chat_template.ChatTemplateError, match="no chat template"):
        chat_template.select_template(None, True)
    info = {
        "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": "</s>",
        "pad_token": None,
    }
    assert chat_template.special_tokens(info) == {"bos_token": "<s>", "eos_token": "</s>"}


def test_tiny_model_template_renders_as_transformers_and_not_as_lm_eval_remote() -> None:
    """The vLLM tier's template relies on trim_blocks/lstrip_blocks: the plugin's rendering
    is transformers'; lm-eval's remote renderer (its own Jinja environment, no bos_token)
    gives another prompt, hence other scores."""
    import jinja2
    from lm_eval.utils import env
    from transformers.utils.chat_template_utils import render_jinja_template

    from pytest_evalchemy.testing.tiny_model import CHAT_TEMPLATE as TINY

    chat = CHATS["multiturn"][1:]
    tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    (expected,), _ = render_jinja_template(
        conversations=[chat], chat_template=TINY, add_generation_prompt=True, **tokens
    )
    assert chat_template.render(TINY, chat, tokens=tokens) == expected
    assert expected.startswith("<s><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    compiled = env.from_string(TINY)
    # As lm-eval's RemoteTokenizer.apply_chat_template calls it: no special tokens passed.
    with pytest.raises(jinja2.exceptions.UndefinedError, match="'bos_token' is undefined"):
        compiled.render(messages=chat, add_generation_prompt=True)
    lm_eval_remote = compiled.render(messages=chat, add_generation_prompt=True, **tokens)
    assert lm_eval_remote != expected
    assert "\n    \n" in lm_eval_remote  # no lstrip_blocks/trim_blocks
