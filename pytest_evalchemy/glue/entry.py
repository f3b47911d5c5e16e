"""The module pytest loads from the entry point in every project where the package is
installed: the options, the hook specifications and the ``evalchemy`` fixture. The plugin itself
(``pytest_evalchemy.plugin``, with lm-eval, the HTTP clients and the YAML parser behind it) is
loaded only when a run is asked for, so a project that does not use it pays nothing for it.
Imports nothing but the option table."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

import pytest

from .settings import BY_NAME, SETTINGS, lookup

if TYPE_CHECKING:
    from .api import Evalchemy

# The name the loaded plugin is registered under (`config.pluginmanager.get_plugin`).
PLUGIN_NAME = "evalchemy-run"
# What makes a run: any of these given on the command line, in the environment or the ini file.
ACTIVATING = ("endpoint", "serve", "router")


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's command-line options and their ini twins, from the one table."""
    group = parser.getgroup("evalchemy", "LLM benchmarks with lm-evaluation-harness")
    for s in SETTINGS:
        if s.switch:
            # None when not given: the ini twin decides then.
            group.addoption(s.flag, dest=s.ini, action="store_true", default=None, help=s.help)
            parser.addini(s.ini, f"{s.help} (true/false)", type="bool", default=False)
        elif s.repeatable and s.name != "endpoint":
            group.addoption(s.flag, dest=s.ini, action="append", default=[], help=s.help)
            parser.addini(s.ini, f"{s.help} (one per line)", type="linelist", default=[])
        else:
            # Several endpoints: repeat the option (or separate them with commas).
            action = "append" if s.repeatable else "store"
            group.addoption(
                s.flag, dest=s.ini, default=None, action=action, metavar=s.metavar, help=s.help
            )
            parser.addini(s.ini, s.help, default=None)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from .. import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def is_active(config: pytest.Config) -> bool:
    """Whether this pytest run is an evaluation run (an endpoint, a model to serve, a router)."""
    return any(
        lookup(
            name, config.getoption(BY_NAME[name].ini), os.environ, config.getini(BY_NAME[name].ini)
        )[0]
        for name in ACTIVATING
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Without an endpoint the plugin adds nothing: an ordinary pytest run is unaffected.
    if is_active(config):
        # Its own pytest_configure runs as it is registered (pytest replays that hook).
        config.pluginmanager.register(
            importlib.import_module("pytest_evalchemy.plugin"), PLUGIN_NAME
        )


@pytest.fixture
def evalchemy(request: pytest.FixtureRequest) -> Evalchemy:
    """Run lm-eval tasks from a test: ``evalchemy.run("mini_arc", limit=50).metric("acc")``."""
    plugin: Any = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if plugin is None:
        # Like the plugin itself: without an endpoint an ordinary pytest run is unaffected.
        pytest.skip("evalchemy: no --evalchemy-endpoint or --evalchemy-serve given")
    return plugin.make_evalchemy(request)
