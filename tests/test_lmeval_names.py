"""Every private lm-eval name the plugin relies on still exists on the installed lm-eval
(``run/lmeval/private.py`` lists them): a change in lm-eval fails here, naming the name and
what of the plugin uses it."""

from __future__ import annotations

import pytest

from pytest_evalchemy.run.lmeval import private


@pytest.mark.parametrize("entry", private.NAMES, ids=lambda e: f"{e.owner}.{e.name}")
def test_the_private_name_holds(entry: private.PrivateName) -> None:
    problem = private.problem(entry)
    assert problem is None, problem


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            private.PrivateName(private.TEMPLATE_API, "_gone_attr", "attribute", "the test"),
            "the attribute '_gone_attr' is no longer in its code",
        ),
        (
            private.PrivateName(private.TEMPLATE_API, "_gone", "method", "the test"),
            "no such method",
        ),
        (
            private.PrivateName(
                private.TEMPLATE_API, "amodel_call", "method", "the test", ("self", "semaphore")
            ),
            "expected ('self', 'semaphore') first",
        ),
        (
            private.PrivateName("lm_eval.no_such_module.X", "y", "global", "the test"),
            "lm_eval.no_such_module.X is gone",
        ),
        (
            private.PrivateName(private.REMOTE_TOKENIZER, "NoSuchText:", "text", "the test"),
            "the text 'NoSuchText:' is no longer in its code",
        ),
    ],
)
def test_a_changed_name_is_named_with_its_user(entry: private.PrivateName, words: str) -> None:
    # The check above means nothing if it cannot fail: a name lm-eval lacks is reported.
    problem = private.problem(entry)
    assert problem is not None
    assert problem.startswith(f"lm-eval changed '{entry.owner}")
    assert "which the test relies on" in problem
    assert words in problem
