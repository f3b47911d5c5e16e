"""The ``Endpoint`` value: what a user types, normalized once, and every URL derived from it."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest

from pytest_evalchemy.core.endpoint import Endpoint, parse_endpoints
from pytest_evalchemy.core.errors import EndpointError

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_evalchemy"


@pytest.mark.parametrize(
    "typed",
    ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/completions/"],
)
def test_a_server_root_or_v1_becomes_the_completions_url(typed: str) -> None:
    endpoint = Endpoint.parse(typed)
    assert endpoint.url == "http://h:8000/v1/completions"
    assert endpoint.completions_url == endpoint.url
    assert endpoint.chat_url is None
    assert endpoint.chat_completions_url == "http://h:8000/v1/chat/completions"
    assert endpoint.root == "http://h:8000"
    assert endpoint.models_url == "http://h:8000/v1/models"
    assert endpoint.tokenize_url == "http://h:8000/tokenize"
    assert endpoint.tokenizer_info_url == "http://h:8000/tokenizer_info"
    assert endpoint.health_url == "http://h:8000/health"


def test_a_chat_url_keeps_its_path_and_names_its_completions_sibling() -> None:
    endpoint = Endpoint.parse("https://h/proxy/v1/chat/completions")
    assert endpoint.chat_url == "https://h/proxy/v1/chat/completions"
    assert endpoint.chat_completions_url == endpoint.chat_url
    assert endpoint.completions_url == "https://h/proxy/v1/completions"
    assert endpoint.root == "https://h/proxy"
    assert endpoint.models_url == "https://h/proxy/v1/models"


def test_credentials_stay_in_the_urls_and_leave_the_redacted_form() -> None:
    endpoint = Endpoint.parse("http://us%40er:p%3Ass@h:8000/v1?token=abc")
    # lm-eval's base_url and the derived URLs keep them (the request splits them off).
    assert endpoint.completions_url == "http://us%40er:p%3Ass@h:8000/v1/completions?token=abc"
    assert endpoint.redacted == "http://h:8000/v1/completions"
    basic = "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert endpoint.basic_auth == basic
    assert endpoint.headers == {"Authorization": basic}
    # An API key wins: one Authorization header, the key's.
    keyed = Endpoint.parse("http://u:pw@h", api_key="sk-1")
    assert keyed.headers == {"Authorization": "Bearer sk-1"}
    assert "sk-1" not in repr(keyed)
    assert Endpoint.parse("http://h").headers == {}


def test_a_started_server_shares_the_runs_key_and_tls() -> None:
    given = Endpoint.parse("https://h", api_key="sk-1", verify="/ca.pem")
    started = given.at("http://127.0.0.1:5000")
    assert (started.url, started.api_key, started.verify) == (
        "http://127.0.0.1:5000/v1/completions",
        "sk-1",
        "/ca.pem",
    )


def test_a_list_is_split_normalized_and_deduplicated() -> None:
    endpoints = parse_endpoints("http://a:1, http://b:2/v1 http://a:1/v1/completions", verify=False)
    assert [e.url for e in endpoints] == ["http://a:1/v1/completions", "http://b:2/v1/completions"]
    assert {e.verify for e in endpoints} == {False}
    with pytest.raises(EndpointError, match="'localhost:8000' is not an http"):
        parse_endpoints("localhost:8000")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", ["run/session.py", "core/endpoint.py", "run/serve.py"])
def test_the_set_up_and_the_endpoint_value_import_no_pytest(module: str) -> None:
    """The session's set-up is pytest-free (the glue in plugin.py calls it); the endpoint
    value and the server runner need nothing beyond the standard library."""
    found = _imports(PACKAGE / module)
    assert "pytest" not in found
    if module != "run/session.py":
        assert not found & {"requests", "urllib3", "aiohttp", "lm_eval"}


def test_plugin_py_is_glue_of_at_most_300_lines() -> None:
    assert len((PACKAGE / "plugin.py").read_text().splitlines()) <= 300


def test_no_module_cuts_endpoint_urls_but_the_endpoint_value() -> None:
    """URLs are derived in core/endpoint.py only (the test server and the front end's dry
    run, which builds no Endpoint, aside)."""
    cutting = (
        '.removesuffix("/completions")',
        '.split("/v1/completions"',
        '.rsplit("/completions"',
        '+ "/v1/completions"',
        '+ "/v1/models"',
        '"/chat/completions"',
    )
    found = [
        f"{path.relative_to(PACKAGE)}: {pattern}"
        for path in PACKAGE.rglob("*.py")
        if path.parts[-2] != "testing" and path != PACKAGE / "core" / "endpoint.py"
        for pattern in cutting
        if pattern in path.read_text()
    ]
    assert found == []
