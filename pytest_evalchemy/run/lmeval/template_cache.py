"""lm-eval's prompt templates compiled once per process, not once per use.

lm-eval renders a task's ``doc_to_text``, ``doc_to_target`` and ``doc_to_choice`` with
``lm_eval.utils.apply_template``, which compiles the template's source anew on every call: a
few templates per task, compiled for every document and choice. Measured against the test
server, 2,800 compilations cost 0.45 s of a 6.1 s item of 1,600 requests. ``install`` keeps the
compiled templates of lm-eval's own jinja environment by their source: a template is compiled
from its source alone, and rendering one never changes it, so every prompt, and every score,
stays what lm-eval renders.

Imports no pytest; lm-eval only when ``install`` runs.
"""

from __future__ import annotations

import functools
from typing import Any

from . import private

# Distinct template sources kept: a run's tasks have a few each; the bound caps a run over
# thousands of generated tasks.
MAX_TEMPLATES = 1024
_MARK = "_evalchemy_compiled_once"


def install() -> None:
    """Compile each template source of lm-eval's environment once (idempotent)."""
    env = private.template_env()
    if getattr(env.from_string, _MARK, False):
        return
    compile_source = env.from_string
    cached = functools.lru_cache(maxsize=MAX_TEMPLATES)(compile_source)

    def from_string(source: Any, *args: Any, **kwargs: Any) -> Any:
        # Globals or another template class make it another template: not shared.
        if args or kwargs or not isinstance(source, str):
            return compile_source(source, *args, **kwargs)
        return cached(source)

    setattr(from_string, _MARK, True)
    env.from_string = from_string
