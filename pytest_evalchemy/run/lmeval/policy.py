"""What the plugin adds around lm-eval for one item, handed to the model the harness builds.

lm-eval copies ``model_args`` into its results and shows them in its command: none of this
belongs there, and none of it travels through a class attribute, an environment variable or
a module global. Imports no lm-eval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..concurrency import AdaptiveLimit
from ..context_check import ContextCheck
from ..patience import ItemOutage, Outage
from ..reasoning import DEFAULT_THINK_END
from ..validity import AnswerEnds


@dataclass(frozen=True)
class Reasoning:
    """A reasoning model's generation: no stop strings sent, ``thinking_budget`` tokens more,
    the thinking up to ``think_end_token`` taken off afterwards."""

    thinking_budget: int
    think_end_token: str = DEFAULT_THINK_END


@dataclass(frozen=True)
class ModelPolicy:
    """One item's model: patience with the server, the context check, the count of answers
    that ran out of tokens, the adaptive limit, reasoning, the server's chat template, the BOS
    and the API key."""

    outage: ItemOutage = field(default_factory=lambda: ItemOutage(Outage(0.0)))
    context: ContextCheck = field(default_factory=ContextCheck)
    # Filled by the model as answers come in; the harness hands it out in ItemResult.ends.
    ends: AnswerEnds = field(default_factory=AnswerEnds)
    # --evalchemy-concurrency auto: the endpoint's limit decides how many requests are in
    # flight (num_concurrent is then its maximum); None: num_concurrent at once.
    limit: AdaptiveLimit | None = None
    reasoning: Reasoning | None = None
    chat_template: str | None = None  # one of the server's templates, by name
    # Every prompt starts with the BOS (add_bos_token resolved true); bos_id: the id, None:
    # the tokenizer's bos_token_id.
    add_bos: bool = False
    bos_id: int | None = None
    # Sent as the bearer token; None: lm-eval's own source, OPENAI_API_KEY.
    api_key: str | None = field(default=None, repr=False)
