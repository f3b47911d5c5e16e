"""Two real vLLM replicas (CPU build, tiny model) from ``--evalchemy-serve --evalchemy-replicas
2``, behind a ``vllm-router`` the plugin starts: the run passes, both replicas answer, and the
replicas and the router are gone afterwards."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pytest_evalchemy.run import router

from .helpers import VLLM_TASKS, read_run_summary, run_pytest, vllm_pids_on_port, write_config

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.xdist_group("vllm"),
    pytest.mark.skipif(router.find_binary() is None, reason="vllm-router is not installed"),
]


def test_serve_two_replicas_behind_the_router(
    tiny_model: Path, vllm_python: str, tmp_path: Path
) -> None:
    # One small item: the two servers' start-up is most of the wall time.
    write_config(tmp_path / "eval.json", {"tasks": {"mini_arc": VLLM_TASKS["mini_arc"]}})
    result = run_pytest(
        tmp_path,
        f"--evalchemy-config={tmp_path / 'eval.json'}",
        f"--evalchemy-serve={tiny_model}",
        f"--evalchemy-vllm-python={vllm_python}",
        "--evalchemy-replicas=2",
        "--evalchemy-run-id=pair",
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.stdout.count("starting vLLM on") == 2
    run = tmp_path / "results" / "pair"
    summary = read_run_summary(tmp_path / "results", "pair")
    assert summary["totals"]["passed"] == 1
    assert len(summary["replicas"]) == 2
    assert summary["endpoint"] == summary["router"]
    for i in range(2):
        log = (run / f"vllm_server_{i}.log").read_text()
        port = log.splitlines()[0].split("--port ")[1].split()[0]
        assert f":{port}/v1/completions" in " ".join(summary["replicas"])
        # Each replica answered completion requests of the item (uvicorn's access log).
        assert log.count('"POST /v1/completions HTTP/1.1" 200') > 1, log[-2000:]
        assert vllm_pids_on_port(port) == []
    parts = urlsplit(summary["router"])
    with socket.socket() as sock:
        assert sock.connect_ex((parts.hostname, parts.port)) != 0  # the router is stopped too
