"""The defaults the option table shows in its help, each written once. Imports nothing: the
entry point pytest loads in every project reads them, used or not."""

from __future__ import annotations

DEFAULT_CONFIG = "configs/eval_config.json"
DEFAULT_OUTPUT = "results"
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MAX_DROP = 0.02
# vLLM's default max_num_seqs: more in flight only queues on its side.
DEFAULT_MAX_CONCURRENCY = 256
# The largest share of an item's answers or prompts that may be broken (ended at max_tokens,
# thinking never closed, cut to fit the context) before the item fails instead of scoring them.
DEFAULT_MAX_INVALID_SHARE = 0.5
