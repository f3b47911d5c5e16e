"""lm-eval's prompt templates compiled once: every rendering stays lm-eval's own."""

from __future__ import annotations

import jinja2
import pytest

from pytest_evalchemy.run.lmeval import template_cache

CASES = [
    ("Question: {{question}}\nAnswer:", {"question": "Which colour?"}),
    ("{{choices}}", {"choices": ["red", "green"]}),
    ("{{gold}}", {"gold": 3}),
    ("{{text | regex_replace('[0-9]+', 'N')}} end\n", {"text": "item 12 of 40"}),
    ("{% for c in choices %}{{loop.index}}. {{c}}\n{% endfor %}", {"choices": ["a", "b"]}),
]


def _compiled_anew(source: str) -> jinja2.Template:
    """What lm-eval's environment compiles without the cache (jinja's own method)."""
    from lm_eval import utils

    return jinja2.Environment.from_string(utils.env, source)


def test_renderings_and_errors_are_lm_evals_and_each_source_compiles_once() -> None:
    from lm_eval import utils

    template_cache.install()
    template_cache.install()  # idempotent: not wrapped twice
    for source, doc in CASES:
        assert utils.apply_template(source, doc) == _compiled_anew(source).render(**doc)
        assert utils.env.from_string(source) is utils.env.from_string(source)
    # lm-eval's StrictUndefined still fails a missing field, on every use.
    for _ in range(2):
        with pytest.raises(jinja2.UndefinedError):
            utils.apply_template("{{missing}}", {"question": "q"})
    # Another template class or globals make another template: compiled, not shared.
    first = utils.env.from_string("{{x}}", globals={"x": 1})
    assert first.render() == "1"
    assert utils.env.from_string("{{x}}", globals={"x": 2}).render() == "2"
