"""Two real vLLM replicas (CPU build, tiny model) from ``--evalchemy-serve --evalchemy-replicas
2``, behind a ``vllm-router`` the plugin starts: the run passes, both replicas answer, and the
replicas and the router are gone afterwards."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pytest_evalchemy.run import router

from .conftest import write_config
from .test_vllm_integration import TASKS, _vllm_pids_on_port

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.xdist_group("vllm"),
    pytest.mark.skipif(router.find_binary() is None, reason="vllm-router is not installed"),
]


def test_serve_two_replicas_behind_the_router(
    tiny_model: Path, vllm_python: str, tmp_path: Path
) -> None:
    # One small item: the two servers' start-up is most of the wall time.
    write_config(tmp_path / "eval.json", {"tasks": {"mini_arc": TASKS["mini_arc"]}})
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        f"--evalchemy-config={tmp_path / 'eval.json'}",
        "-p",
        "no:cacheprovider",
        f"--evalchemy-serve={tiny_model}",
        f"--evalchemy-vllm-python={vllm_python}",
        "--evalchemy-replicas=2",
        "--evalchemy-run-id=pair",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.stdout.count("starting vLLM on") == 2
    run = tmp_path / "results" / "pair"
    summary = json.loads((run / "evalchemy_summary_pair.json").read_text())
    assert summary["totals"]["passed"] == 1
    assert len(summary["replicas"]) == 2
    assert summary["endpoint"] == summary["router"]
    for i in range(2):
        log = (run / f"vllm_server_{i}.log").read_text()
        port = log.splitlines()[0].split("--port ")[1].split()[0]
        assert f":{port}/v1/completions" in " ".join(summary["replicas"])
        # Each replica answered completion requests of the item (uvicorn's access log).
        assert log.count('"POST /v1/completions HTTP/1.1" 200') > 1, log[-2000:]
        assert _vllm_pids_on_port(port) == []
    parts = urlsplit(summary["router"])
    with socket.socket() as sock:
        assert sock.connect_ex((parts.hostname, parts.port)) != 0  # the router is stopped too
