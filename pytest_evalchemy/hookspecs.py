"""Hooks other plugins and ``conftest.py`` files can implement (added in ``pytest_addhooks``).

Modelled on pytest-benchmark's generate/update pair for the JSON it writes: one hook builds
the summary (the plugin's own is a ``trylast`` implementation, so a user's replaces it), one
amends it in place; and one hook changes the lm-eval request of an item before it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .run.lmeval.harness import ItemRequest


@pytest.hookspec(firstresult=True)
def pytest_evalchemy_summary(
    config: pytest.Config, summary: dict[str, Any]
) -> dict[str, Any] | None:
    """Build the run summary from ``summary`` (the plugin's): return the dict to write, or
    None to leave it to the next implementation. Called on the controller whenever the summary
    is built: each time it is written (after every item, and at the end with ``finished_at``
    set) and for the HTML and Markdown reports, so keep it free of side effects."""


@pytest.hookspec
def pytest_evalchemy_update_summary(config: pytest.Config, summary: dict[str, Any]) -> None:
    """Amend the summary in place, e.g. ``summary["commit"] = ...``; called after
    ``pytest_evalchemy_summary``, as often as it is."""


@pytest.hookspec(firstresult=True)
def pytest_evalchemy_item_request(item: pytest.Item, request: ItemRequest) -> ItemRequest | None:
    """Change how an item runs: return a modified ``request`` (``dataclasses.replace(request,
    num_fewshot=0)``), or None to keep it. Called in the process that runs the item (an xdist
    worker under ``-n``), for the config's items and for ``evalchemy.run()`` alike; ``item`` is
    the config item or the test that called ``evalchemy.run()``."""
