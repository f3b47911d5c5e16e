"""How each item talks to an instruct or reasoning model: chat template or not, chat endpoint
or completions, reasoning or not. The run-wide options override the task's keys (as
``--evalchemy-limit`` overrides ``limit``). Imports neither pytest nor lm-eval."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import TaskConfig
from .reasoning import DEFAULT_THINK_END, DEFAULT_THINKING_BUDGET
from .tasks import catalog


@dataclass(frozen=True)
class ChatOptions:
    """The run-wide chat and reasoning options; None: not given (each task's setting)."""

    chat_template: bool | str | None = None
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None
    reasoning: str | None = None  # "true", "false" or "auto"
    think_end_token: str | None = None
    thinking_budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "chat_template": self.chat_template,
            "system_instruction": self.system_instruction,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
            "reasoning": self.reasoning,
            "think_end_token": self.think_end_token,
            "thinking_budget": self.thinking_budget,
        }


@dataclass(frozen=True)
class ItemChat:
    """What an item does, resolved."""

    chat_url: str | None = None  # generation through /v1/chat/completions
    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None
    reasoning: bool = False
    reasoning_setting: str = "auto"  # what was asked: "true", "false", "auto"
    think_end_token: str = DEFAULT_THINK_END
    thinking_budget: int = DEFAULT_THINKING_BUDGET

    @property
    def templated(self) -> bool:
        return self.chat_url is not None or self.apply_chat_template is not False


def _template(task: TaskConfig, options: ChatOptions, *, chat_endpoint: bool) -> bool | str:
    """The item's apply_chat_template: the run option, else the task key; behind a chat
    endpoint on by default (the model is served for chat: its loglikelihood prompts are too),
    unless the run option turns it off."""
    if options.chat_template is not None:
        return options.chat_template
    if chat_endpoint and task.apply_chat_template is False:
        return True
    return task.apply_chat_template


def generation_only(task: TaskConfig, include_paths: Iterable[Path]) -> bool:
    """Whether every lm-eval task of the item is known to be a generation task."""
    index = catalog.known_tasks(include_paths)
    return all(index.get(name) == "generate_until" for name in task.tasks)


def reasoning_setting(task: TaskConfig, options: ChatOptions) -> str:
    return options.reasoning or task.reasoning or "auto"


def item_chat(
    task: TaskConfig,
    options: ChatOptions,
    *,
    chat_url: str | None,
    reasoning_detected: bool,
    include_paths: Iterable[Path],
) -> ItemChat:
    """The item's chat settings. With a chat endpoint, generation items go through it and the
    others through the same server's completions endpoint with the chat template applied."""
    template = _template(task, options, chat_endpoint=chat_url is not None)
    use_chat = chat_url is not None and generation_only(task, include_paths)
    setting = reasoning_setting(task, options)
    return ItemChat(
        chat_url=chat_url if use_chat else None,
        apply_chat_template=False if use_chat else template,
        system_instruction=options.system_instruction
        if options.system_instruction is not None
        else task.system_instruction,
        fewshot_as_multiturn=options.fewshot_as_multiturn
        if options.fewshot_as_multiturn is not None
        else task.fewshot_as_multiturn,
        reasoning=reasoning_detected if setting == "auto" else setting == "true",
        reasoning_setting=setting,
        think_end_token=options.think_end_token or task.think_end_token or DEFAULT_THINK_END,
        thinking_budget=next(
            (v for v in (options.thinking_budget, task.thinking_budget) if v is not None),
            DEFAULT_THINKING_BUDGET,
        ),
    )


def needs_server_template(
    tasks: Iterable[TaskConfig], options: ChatOptions, *, chat_endpoint: bool, local_tokenizer: bool
) -> list[str]:
    """The task keys that need the server's chat template (rendered by the plugin): those
    with a template on the completions endpoint, unless a local tokenizer renders it."""
    if local_tokenizer:
        return []
    return [
        task.key
        for task in tasks
        if _template(task, options, chat_endpoint=chat_endpoint) is not False
    ]
