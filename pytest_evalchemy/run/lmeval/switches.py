"""The one place below the pytest glue that writes the process's environment: the switches
lm-eval's libraries read only from there (``tests/test_layers.py`` allows this module alone)."""

from __future__ import annotations

import os

# Each as a default: a user who sets one (progress bars wanted) keeps it.
LIBRARY_SWITCHES = {
    # Progress bars would interleave with pytest's output.
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # transformers says at import that it found no PyTorch; lm-eval's API models need none.
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_libraries() -> None:
    """Turn the libraries' progress bars and advisories off unless the user set them."""
    for name, value in LIBRARY_SWITCHES.items():
        os.environ.setdefault(name, value)
