"""pytest-evalchemy: LLM benchmarks from lm-evaluation-harness as pytest test items."""

from __future__ import annotations

__version__ = "0.1.0"
