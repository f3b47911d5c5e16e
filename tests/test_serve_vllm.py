"""Integration tests of ``pytest_evalchemy.serve`` against a real vLLM server (CPU build, tiny model).

They need the python of a vLLM environment: ``EVALCHEMY_VLLM_PYTHON``, else ``.venv-vllm/bin/python``
(``make .venv-vllm/.installed``). Without it they fail rather than skip, so a broken setup is seen.
One server is started for the module (conftest's ``vllm_server``); the stop test runs last and
stops it.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.serve import ServeError, ServeSpec, VllmServer

pytestmark = [pytest.mark.vllm, pytest.mark.xdist_group("vllm")]

PROMPT = "def hello_world(name):\n    return name"


def _http(srv: VllmServer, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        srv.base_url + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def _tokenize(srv: VllmServer, text: str, *, special: bool = False) -> list[int]:
    body = {"model": srv.model_id, "prompt": text, "add_special_tokens": special}
    data = _http(srv, "/tokenize", body)
    assert data["count"] == len(data["tokens"])
    return list(data["tokens"])


def _proc_state(pid: int) -> str | None:
    """The process's state letter, or None when it is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return None


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def test_missing_model_raises_with_log(vllm_python: str, tmp_path: Path) -> None:
    """A model folder that does not exist: ServeError with the command and vLLM's last log lines."""
    missing = tmp_path / "no-such-model"
    log_path = tmp_path / "server.log"
    # A startup timeout far past vLLM's own failure: "exited with code" (not "not ready after")
    # says the dead server was noticed, with no clock involved.
    spec = ServeSpec(model=str(missing), python=vllm_python, log_path=log_path, startup_timeout=900)
    srv = VllmServer(spec)
    srv.start()
    with pytest.raises(ServeError) as info:
        srv.wait_ready()
    message = str(info.value)
    assert "exited with code" in message
    assert "vllm.entrypoints.openai.api_server" in message
    assert str(missing) in message
    assert f"lines of {log_path}" in message
    assert message.count("\n  | ") >= 5  # vLLM's own traceback, not just our header line
    srv.stop()  # idempotent after wait_ready already cleaned up


def test_models_lists_the_model(vllm_server: VllmServer, tiny_model: Path) -> None:
    data = _http(vllm_server, "/v1/models")
    assert [m["id"] for m in data["data"]] == [str(tiny_model)]
    assert vllm_server.model_id == str(tiny_model)
    assert vllm_server.max_model_len == 1024  # the CPU default
    assert vllm_server.completions_url.endswith("/v1/completions")


def test_echo_logprobs(vllm_server: VllmServer) -> None:
    """The loglikelihood request shape lm-eval sends: prompt logprobs, the first (BOS) one null."""
    body = {
        "model": vllm_server.model_id,
        "prompt": PROMPT,
        "max_tokens": 1,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }
    lp = _http(vllm_server, "/v1/completions", body)["choices"][0]["logprobs"]
    assert lp["tokens"][0] == "<s>"
    assert lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp["token_logprobs"][1:])
    assert len(lp["tokens"]) >= 4

    # Token ids, as lm-eval's remote tokenizer sends them (no BOS): the first logprob is null too.
    ids = _tokenize(vllm_server, PROMPT)
    body["prompt"] = [ids]
    lp = _http(vllm_server, "/v1/completions", body)["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None
    assert len(lp["token_logprobs"]) == len(ids) + 1


def test_tokenize_detokenize_round_trip(vllm_server: VllmServer) -> None:
    assert _http(vllm_server, "/tokenizer_info")  # lm-eval's "auto" backend probes it
    ids = _tokenize(vllm_server, PROMPT)
    assert len(ids) > 3
    assert _tokenize(vllm_server, PROMPT, special=True) == [1, *ids]  # the tokenizer adds BOS
    body = {"model": vllm_server.model_id, "tokens": ids}
    assert _http(vllm_server, "/detokenize", body)["prompt"] == PROMPT


def test_stop_string_is_honoured(vllm_server: VllmServer) -> None:
    body = {
        "model": vllm_server.model_id,
        "prompt": PROMPT,
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": True,  # always 24 tokens, so there is text to cut
    }
    full = _http(vllm_server, "/v1/completions", body)["choices"][0]["text"]
    stop = next(
        (full[i : i + 2] for i in range(len(full) // 2, len(full) - 1) if full[i : i + 2].strip()),
        None,
    )
    assert stop, f"no usable stop string in {full!r}"
    choice = _http(vllm_server, "/v1/completions", {**body, "stop": [stop]})["choices"][0]
    assert choice["text"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == stop


def test_stop_ends_the_process_group(vllm_server: VllmServer) -> None:
    """Runs last: stops the module's server and checks every process of its group is gone."""
    assert vllm_server.pid is not None
    pids = _group_pids(vllm_server.pid)
    assert vllm_server.pid in pids
    vllm_server.stop()
    left = {pid: state for pid in pids if (state := _proc_state(pid)) not in (None, "Z")}
    assert not left, f"still running after stop(): {left}"
    vllm_server.stop()  # idempotent
