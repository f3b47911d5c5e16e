"""The defaults the option table shows in its help, each written once. Imports nothing: the
entry point pytest loads in every project reads them, used or not."""

from __future__ import annotations

DEFAULT_CONFIG = "configs/eval_config.json"
DEFAULT_OUTPUT = "results"
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MAX_DROP = 0.02
# vLLM's default max_num_seqs: more in flight only queues on its side.
DEFAULT_MAX_CONCURRENCY = 256
