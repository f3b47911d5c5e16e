"""Test-suite setup shared by every test: an offline Hugging Face stack. (pytester is enabled with
``-p pytester`` in pyproject.toml: ``pytest_plugins`` here would break runs whose config file
lies in this repository but whose rootdir does not.)"""

from __future__ import annotations

import os
from pathlib import Path

# lm-eval's datasets layer must never reach for the hub, and its caches stay in the project.
_CACHE = Path(__file__).resolve().parent / ".cache"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_CACHE / "hf"))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# The plugin must stay inactive in the outer test session whatever the shell has set.
os.environ.pop("EVALCHEMY_ENDPOINT", None)
