"""The option table: every option declared once, each with its ini twin named like the flag,
one resolver (command line > environment > ini) for the plugin and the front end, and the
place a value came from in every message."""

from __future__ import annotations

import pytest

from pytest_evalchemy.glue.settings import BY_NAME, ENV, FLAG, INI, SETTINGS, lookup, source_text
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import OFFLINE_CONFIG, check_summary, read_summary


def test_each_option_is_named_once_and_its_ini_twin_like_the_flag() -> None:
    assert len(BY_NAME) == len(SETTINGS)
    assert BY_NAME["no_cache"].flag == "--evalchemy-no-cache"
    assert BY_NAME["no_cache"].ini == "evalchemy_no_cache"
    for s in SETTINGS:
        assert s.flag == "--evalchemy-" + s.ini.removeprefix("evalchemy_").replace("_", "-")


def test_pytest_help_lists_every_flag_and_its_ini_twin(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    missing = [s.flag for s in SETTINGS if s.flag not in text]
    missing += [s.ini for s in SETTINGS if f"  {s.ini} " not in text and f"  {s.ini}\n" not in text]
    assert missing == []


def test_the_resolver_takes_flag_then_environment_then_ini() -> None:
    env = {"EVALCHEMY_OUTPUT": "from-env"}
    assert lookup("output", "from-flag", env, "from-ini") == ("from-flag", FLAG)
    assert lookup("output", None, env, "from-ini") == ("from-env", ENV)
    assert lookup("output", None, {}, "from-ini") == ("from-ini", INI)
    assert lookup("output", None, {"EVALCHEMY_OUTPUT": ""}, None) == (None, None)
    # A switch or a repeatable option not given leaves the ini its say.
    assert lookup("no_cache", None, {}, True) == (True, INI)
    assert lookup("threshold", [], {}, ["a>=1"]) == (["a>=1"], INI)


def test_the_source_names_the_place() -> None:
    assert source_text("gate", FLAG, "tox.ini") == "--evalchemy-gate"
    assert (
        source_text("gate", ENV, "tox.ini")
        == "--evalchemy-gate (from the environment variable EVALCHEMY_GATE)"
    )
    assert (
        source_text("gate", INI, "tox.ini") == "--evalchemy-gate (from evalchemy_gate in tox.ini)"
    )


def test_switches_and_repeatable_options_come_from_the_ini_file(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    # evalchemy_no_report and evalchemy_threshold had no ini twin before the table.
    pytester.makeini(
        "[pytest]\nevalchemy_no_report = true\nevalchemy_threshold =\n    mini_arc:acc>=0.99\n"
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        f"--evalchemy-config={OFFLINE_CONFIG}",
        "--evalchemy-run-id=ini",
        "-k",
        "mini_arc",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=1)  # 0.75 is below the ini's threshold
    summary = check_summary(read_summary(pytester.path / "results"))
    (check,) = summary["tasks"]["mini_arc/mini_arc"]["checks"]
    assert check["bound"] == ">= 0.99"
    assert not (pytester.path / "results" / "ini" / "report.html").exists()


def test_a_bad_ini_value_names_the_ini_file(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    pytester.makeini("[pytest]\nevalchemy_gate = bayes\n")
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}", f"--evalchemy-config={OFFLINE_CONFIG}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--evalchemy-gate (from evalchemy_gate in *tox.ini): expected point or ci, got 'bayes'*"]
    )


def test_the_endpoints_are_one_normalized_list_from_flags_env_or_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_evalchemy.glue.options import resolve_options

    config = pytester.parseconfig(
        "--evalchemy-endpoint=http://a:1",
        "--evalchemy-endpoint=http://b:2/v1,http://a:1/v1/completions",
    )
    options = resolve_options(config)
    assert [e.url for e in options.endpoints] == [
        "http://a:1/v1/completions",
        "http://b:2/v1/completions",
    ]
    assert options.endpoint is not None
    assert options.endpoint.url == "http://a:1/v1/completions"
    monkeypatch.setenv("EVALCHEMY_ENDPOINT", "http://c:3 http://d:4/v1")
    options = resolve_options(pytester.parseconfig())
    assert [e.url for e in options.endpoints] == [
        "http://c:3/v1/completions",
        "http://d:4/v1/completions",
    ]
