"""What makes a run itself, so that ``--evalchemy-resume`` completes the same run and never
mixes two. Imports no pytest.

The summary's ``identity`` object holds everything that changes an item's scores or verdicts:
the config's sha256 (tasks, few-shot, limits, thresholds), the command-line settings that
override it, the served model and its context length, the tokenizer, lm-eval's version, and the
chat settings (``None`` until the plugin has chat models). A resumed run builds the same object
and compares: the fields that need the endpoint are known only after the endpoint check, so
they are compared when both runs know them.
"""

from __future__ import annotations

from typing import Any

# Field of the identity, and its name in the message (in this order).
FIELDS: tuple[tuple[str, str], ...] = (
    ("config_sha256", "config sha256"),
    ("limit", "--evalchemy-limit"),
    ("max_length", "max length"),
    ("thresholds", "--evalchemy-threshold"),
    ("gate", "gate"),
    ("model", "served model"),
    ("max_model_len", "max_model_len"),
    ("tokenizer", "tokenizer"),
    ("lm_eval", "lm-eval version"),
    ("chat", "chat settings"),
)
# Fields only the endpoint check knows: absent before it, compared after it.
ENDPOINT_FIELDS = ("model", "max_model_len", "tokenizer", "max_length")


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each field ``current`` knows that differs from ``recorded``, in words."""
    out = []
    for name, label in FIELDS:
        unknown = current.get(name) is None or recorded.get(name) is None
        if name not in current or (unknown and name in ENDPOINT_FIELDS):
            continue  # a run that never reached the endpoint scored nothing to mix
        if recorded.get(name) != current[name]:
            out.append(
                f"{label} {_show(recorded.get(name))} in the run, {_show(current[name])} now"
            )
    return out


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and value.isalnum():
        return value[:12]  # a sha256: its start says enough
    return repr(value)


def refusal(run_id: str, found: list[str]) -> str:
    """The one line that refuses a resume which would mix runs."""
    return (
        f"--evalchemy-resume {run_id}: not the same run ({'; '.join(found)}): run it as it "
        "was, start a new run, or pass --evalchemy-resume-force to mix them (the summary "
        "records it)"
    )
