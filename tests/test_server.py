"""The vLLM look-alike test server on its own: protocol shapes, the scoring rule, faults, and lm-eval."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pytest_evalchemy.testing.answer_key import AnswerEntry, default_known
from pytest_evalchemy.testing.processes import spawn
from pytest_evalchemy.testing.server import (
    BOS_ID,
    DEFAULT_MODEL,
    EOS_ID,
    READY_PREFIX,
    EvalchemyTestServer,
    decode,
    encode,
)

from .helpers import REPO

# A tiny answer key: two multiple-choice documents (one known, one not) and two generation documents.
ENTRIES = [
    AnswerEntry("mc", 0, "[mc-0]", "choice", " Paris", "", True),
    AnswerEntry("mc", 1, "[mc-1]", "choice", " Rome", "", False),
    AnswerEntry("gen", 0, "[gen-0]", "generate", " 42\nQuestion: next", " 7\n", True),
    AnswerEntry("gen", 1, "[gen-1]", "generate", " 42\n", " 7\nQuestion: next", False),
]


@pytest.fixture(scope="module")
def server() -> Iterator[EvalchemyTestServer]:
    with EvalchemyTestServer(ENTRIES, max_model_len=256) as srv:
        yield srv


def _complete(srv: EvalchemyTestServer, **body: Any) -> requests.Response:
    body.setdefault("model", srv.model)
    return requests.post(srv.completions_url, json=body, timeout=10)


def _echo_logprobs(srv: EvalchemyTestServer, text: str) -> list[float | None]:
    """Loglikelihood request exactly as lm-eval sends it; returns token_logprobs."""
    r = _complete(
        srv,
        prompt=[encode(text)],
        temperature=0,
        max_tokens=1,
        logprobs=1,
        seed=1234,
        echo=True,
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["token_logprobs"]


# --- endpoints -------------------------------------------------------------------------------------------------


def test_models_endpoint(server: EvalchemyTestServer) -> None:
    r = requests.get(f"{server.url}/v1/models", timeout=10)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    (model,) = data["data"]
    assert model["id"] == DEFAULT_MODEL
    assert model["object"] == "model"
    assert model["owned_by"] == "evalchemy-test"
    assert model["max_model_len"] == 256


def test_tokenizer_endpoints_round_trip(server: EvalchemyTestServer) -> None:
    info = requests.get(f"{server.url}/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == "</s>"
    assert info["bos_token"] == "<s>"
    assert info["pad_token"] is None
    assert info["model_max_length"] == 256
    assert "tokenizer_class" in info

    text = "Héllo </s> wörld"
    r = requests.post(
        f"{server.url}/tokenize", json={"prompt": text, "add_special_tokens": False}, timeout=10
    )
    body = r.json()
    assert body["tokens"] == encode(text)
    assert body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 256
    assert body["token_strs"] is None
    assert body["tokens"][:2] == [ord("H") + 3, 0xC3 + 3]  # byte + 3, UTF-8 bytes
    assert EOS_ID in body["tokens"]  # special-token text maps to its id, as with HF tokenizers
    with_bos = requests.post(
        f"{server.url}/tokenize", json={"prompt": text, "add_special_tokens": True}, timeout=10
    ).json()
    assert with_bos["tokens"] == [BOS_ID, *body["tokens"]]

    back = requests.post(f"{server.url}/detokenize", json={"tokens": body["tokens"]}, timeout=10)
    assert back.json() == {"prompt": text}
    # What lm-eval's RemoteTokenizer does to find the EOS and BOS ids.
    assert encode("</s>")[0] == EOS_ID
    assert encode("<s>")[0] == BOS_ID
    assert decode([BOS_ID, *encode("a")]) == "<s>a"


def test_echo_logprobs_shape(server: EvalchemyTestServer) -> None:
    ids = encode("[mc-0] Capital of France? Paris")
    r = _complete(server, prompt=[ids], max_tokens=1, logprobs=1, echo=True, temperature=0)
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "text_completion"
    assert out["model"] == DEFAULT_MODEL
    assert out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    n = len(ids) + 1  # the prompt, then one generated token
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert len(lp["text_offset"]) == n
    assert lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None
    assert lp["tokens"][:3] == ["[", "m", "c"]
    rest = zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True)
    for tok, value, top in rest:
        assert top[tok] == value == max(top.values())  # lm-eval's greedy check
    assert choice["text"].startswith("[mc-0] Capital of France? Paris")
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": n}

    # max_tokens 0 echoes the prompt only; a string prompt gets BOS like vLLM.
    r0 = _complete(server, prompt="abc", max_tokens=0, logprobs=1, echo=True)
    lp0 = r0.json()["choices"][0]["logprobs"]
    assert lp0["tokens"] == ["<s>", "a", "b", "c"]
    assert lp0["token_logprobs"][0] is None
    assert r0.json()["choices"][0]["text"] == "abc"


def test_prompt_forms_and_batch_order(server: EvalchemyTestServer) -> None:
    for prompt in ("[gen-0] Q", ["[gen-0] Q"], encode("[gen-0] Q"), [encode("[gen-0] Q")]):
        r = _complete(server, prompt=prompt, max_tokens=32, stop=["\n"])
        assert r.status_code == 200, (prompt, r.text)
        assert [c["text"] for c in r.json()["choices"]] == [" 42"]
    batch = [encode("[gen-0] Q"), encode("[gen-1] Q"), encode("no marker")]
    r = _complete(server, prompt=batch, max_tokens=32, stop=["\n"])
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["text"] for c in choices] == [" 42", " 7", " I do not know."]
    assert server.stats()["prompts"] >= 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mc-0] Capital of France? Paris", -0.05),  # known, right choice: likely
        ("[mc-0] Capital of France? Rome", -3.0),  # known, wrong choice: unlikely
        ("[mc-1] Capital of Italy? Rome", -3.0),  # unknown, right choice: unlikely
        ("[mc-1] Capital of Italy? Paris", -0.05),  # unknown, wrong choice: likely
        ("Nothing the model knows about", -2.0),  # no marker
        # Few-shot: an earlier example's marker does not matter, the last one does.
        ("[mc-1] Capital of Italy? Rome\n\n[mc-0] Capital of France? Paris", -0.05),
        ("[mc-0] Capital of France? Paris\n\n[mc-1] Capital of Italy? Rome", -3.0),
    ],
)
def test_scoring_rule(server: EvalchemyTestServer, text: str, expected: float) -> None:
    values = _echo_logprobs(server, text)
    assert values[0] is None
    assert values[1:-1] == [expected] * (len(values) - 2)
    assert values[-1] == -0.05  # the generated token


def test_generation_stop_and_length(server: EvalchemyTestServer) -> None:
    prompt = [encode("[gen-0] What is six times seven?\nAnswer:")]
    # Known: the right answer; the stop string is cut off and reported.
    r = _complete(server, prompt=prompt, max_tokens=32, stop=["\n", "Question:"]).json()
    (c,) = r["choices"]
    assert (c["text"], c["finish_reason"], c["stop_reason"], c["logprobs"]) == (
        " 42",
        "stop",
        "\n",
        None,
    )
    assert r["usage"]["completion_tokens"] == 4  # the stop string's tokens were generated too
    # The earliest stop string wins, whatever its place in the list.
    c = _complete(server, prompt=prompt, max_tokens=32, stop=["next", "Q"]).json()["choices"][0]
    assert (c["text"], c["stop_reason"]) == (" 42\n", "Q")
    c = _complete(server, prompt=prompt, max_tokens=32, stop="\n").json()["choices"][0]
    assert (c["text"], c["stop_reason"]) == (" 42", "\n")
    # No stop: cut to max_tokens bytes.
    c = _complete(server, prompt=prompt, max_tokens=2).json()["choices"][0]
    assert (c["text"], c["finish_reason"], c["stop_reason"]) == (" 4", "length", None)
    # A stop string beyond max_tokens does not count.
    c = _complete(server, prompt=prompt, max_tokens=3, stop=["\n"]).json()["choices"][0]
    assert (c["text"], c["finish_reason"]) == (" 42", "length")
    # Room to finish: a natural end (EOS) is finish_reason "stop" without a stop_reason.
    c = _complete(server, prompt=prompt, max_tokens=100).json()["choices"][0]
    assert (c["text"], c["finish_reason"], c["stop_reason"]) == (
        " 42\nQuestion: next",
        "stop",
        None,
    )
    # Unknown generation document: the wrong answer.
    c = _complete(server, prompt=[encode("[gen-1] Q\nA:")], max_tokens=32, stop=["\n"]).json()
    assert c["choices"][0]["text"] == " 7"
    # Multiple-choice documents and unknown prompts: the fixed answer.
    c = _complete(server, prompt="[mc-0] Q", max_tokens=32, stop=["\n\n"]).json()
    assert c["choices"][0]["text"] == " I do not know."
    # Echo without logprobs returns prompt + generation.
    c = _complete(server, prompt="[gen-0] Q", max_tokens=32, stop=["\n"], echo=True).json()
    assert c["choices"][0]["text"] == "[gen-0] Q 42"


def test_errors_look_like_vllm(server: EvalchemyTestServer) -> None:
    r = _complete(server, prompt=[[65] * 257], max_tokens=0, echo=True, logprobs=1)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "BadRequestError"
    assert err["code"] == 400
    assert err["message"].startswith(
        "This model's maximum context length is 256 tokens. However, your prompt contains at least "
        "257 input tokens."
    )
    # Fits alone, but not with max_tokens.
    r = _complete(server, prompt=[[65] * 250], max_tokens=10)
    assert r.status_code == 400
    assert "maximum context length is 256 tokens" in r.json()["error"]["message"]
    assert _complete(server, prompt=[[65] * 256], max_tokens=0).status_code == 200

    r = _complete(server, model="other-model", prompt="x")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `other-model` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    assert _complete(server, prompt=[]).status_code == 400
    assert _complete(server, prompt=[[999]]).status_code == 400
    bad = requests.post(server.completions_url, data=b"{not json", timeout=10)
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "BadRequestError"
    # Every model serves chat too; a body without messages is refused.
    chat = requests.post(server.chat_completions_url, json={"model": server.model}, timeout=10)
    assert chat.status_code == 400


def test_keep_alive_session(server: EvalchemyTestServer) -> None:
    with requests.Session() as session:
        for i in range(20):
            r = session.post(f"{server.url}/tokenize", json={"prompt": f"x{i}"}, timeout=10)
            assert r.json()["count"] == len(f"x{i}") + 1
            assert r.headers["Content-Length"] == str(len(r.content))
        # An error response must not desynchronize the connection.
        assert session.post(server.completions_url, json={"model": "nope"}).status_code == 404
        assert session.get(f"{server.url}/v1/models", timeout=10).status_code == 200


def test_stats_count_requests() -> None:
    with EvalchemyTestServer(ENTRIES) as srv:
        requests.get(f"{srv.url}/v1/models", timeout=10)
        for _ in range(3):
            _complete(srv, prompt=["a", "b"], max_tokens=1)
        requests.post(f"{srv.url}/tokenize", json={"prompt": "a"}, timeout=10)
        stats = requests.get(f"{srv.url}/stats", timeout=10).json()
        assert stats == srv.stats()
        assert stats["requests"] == {"/v1/models": 1, "/v1/completions": 3, "/tokenize": 1}
        assert stats["completions"] == 3
        assert stats["prompts"] == 6
        assert stats["max_concurrent"] == 1
        assert stats["in_flight"] == 0
        assert stats["faults"] == {
            "reset": 0,
            "fail": 0,
            "invalid_json": 0,
            "hang": 0,
            "rejected": 0,
            "held": 0,
        }
        assert stats["answered"] == 3
        srv.reset_stats()
        assert srv.stats()["completions"] == 0


# Each reply below is read back at once, many times over: a counter updated after the reply
# leaves (or by another thread) would be missed about every other time.
ROUNDS = 40


@pytest.mark.parametrize(
    ("switches", "path", "body", "status"),
    [
        ({}, "/v1/completions", {"prompt": "x", "max_tokens": 1}, 200),
        ({}, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 200),
        ({"fail_first": ROUNDS}, "/v1/completions", {"prompt": "x"}, 503),
        ({"reject_over": 0}, "/v1/completions", {"prompt": "x"}, 429),
    ],
    ids=["answer", "chat", "error", "rejected"],
)
def test_a_reply_is_counted_before_it_leaves(
    switches: dict[str, Any], path: str, body: dict[str, Any], status: int
) -> None:
    with EvalchemyTestServer(ENTRIES, **switches) as srv, requests.Session() as session:
        for n in range(1, ROUNDS + 1):
            assert session.post(f"{srv.url}{path}", json=body, timeout=10).status_code == status
            stats = srv.stats()
            assert stats["in_flight"] == 0, f"reply {n} left while its request still counted"
            answered = n if status == 200 else 0
            assert stats["answered"] == answered, f"reply {n} left before it was counted"
        assert stats["completions"] == ROUNDS
        assert stats["max_concurrent"] == 1  # one after the other: none overlapped the next


# --- fault switches --------------------------------------------------------------------------------------------


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for an event the server counts; the deadline is a failsafe, not a measure."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_max_concurrency_holds_the_others_waiting_until_a_slot_frees() -> None:
    # hold_after=0: each request keeps its slot until release(), so all six are in at once.
    with EvalchemyTestServer(ENTRIES, max_concurrency=2, hold_after=0) as srv:
        codes: list[int] = []

        def call() -> None:
            codes.append(_complete(srv, prompt="x", max_tokens=1).status_code)

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        _until(lambda: srv.stats()["in_flight"] == 6, "six requests in flight")
        _until(lambda: srv.stats()["faults"]["held"] == 2, "two requests holding a slot")
        stats = srv.stats()
        assert stats["max_active"] == 2  # the cap held: four wait for a slot
        assert stats["answered"] == 0
        srv.release()
        for t in threads:
            t.join(60)
        stats = srv.stats()
    assert codes == [200] * 6
    assert stats["max_active"] == 2
    assert stats["max_concurrent"] == 6
    assert stats["faults"]["held"] == 2  # released: the later ones were not held


def test_latency_holds_a_slot_for_the_simulated_compute_until_stopped() -> None:
    # A latency far past the test's own length: the request is seen in its slot, unanswered,
    # and stop() cuts it short.
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _complete(srv, prompt="x", max_tokens=1)
        except requests.RequestException as exc:
            errors.append(exc)

    srv = EvalchemyTestServer(ENTRIES, latency=3600, max_concurrency=1).start()
    try:
        t = threading.Thread(target=call)
        t.start()
        _until(lambda: srv.stats()["max_active"] == 1, "the request in its slot")
        stats = srv.stats()
        assert (stats["in_flight"], stats["answered"]) == (1, 0)
    finally:
        srv.stop()
    t.join(60)
    assert not t.is_alive(), "stop() did not cut the latency short"
    # Answered or cut off, whichever of the write and stop() came first: never a timeout.
    assert not [e for e in errors if not isinstance(e, requests.ConnectionError)]


def test_fail_first_with_retry_after() -> None:
    with EvalchemyTestServer(ENTRIES, fail_first=2, fail_status=429, retry_after=3) as srv:
        first = _complete(srv, prompt="x", max_tokens=1)
        assert first.status_code == 429
        assert first.headers["Retry-After"] == "3"
        assert first.json()["error"]["code"] == 429
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 429
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 200
        assert srv.stats()["faults"]["fail"] == 2
    with EvalchemyTestServer(ENTRIES, fail_first=1) as srv:
        r = _complete(srv, prompt="x", max_tokens=1)
        assert r.status_code == 503
        assert "Retry-After" not in r.headers


def test_reset_first() -> None:
    with EvalchemyTestServer(ENTRIES, reset_first=1) as srv:
        with pytest.raises(requests.ConnectionError):
            _complete(srv, prompt="x", max_tokens=1)
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 200
        assert srv.stats()["faults"]["reset"] == 1


def test_invalid_json_first() -> None:
    with EvalchemyTestServer(ENTRIES, invalid_json_first=1) as srv:
        r = _complete(srv, prompt="x", max_tokens=1)
        assert r.status_code == 200
        with pytest.raises(ValueError, match=r"Expecting|Unterminated|delimiter"):
            json.loads(r.text)
        assert _complete(srv, prompt="x", max_tokens=1).json()["choices"]


def test_faults_take_turns() -> None:
    with EvalchemyTestServer(ENTRIES, reset_first=1, fail_first=1, invalid_json_first=1) as srv:
        with pytest.raises(requests.ConnectionError):
            _complete(srv, prompt="x", max_tokens=1)
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 503
        with pytest.raises(ValueError, match=r"Expecting|Unterminated|delimiter"):
            _complete(srv, prompt="x", max_tokens=1).json()
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 200


def test_hang_after_until_shutdown() -> None:
    srv = EvalchemyTestServer(ENTRIES, hang_after=1).start()
    try:
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 200
        with pytest.raises(requests.ReadTimeout):
            requests.post(srv.completions_url, json={"prompt": "x"}, timeout=0.3)
        # A client still waiting is released (with a connection error) by stop().
        errors: list[BaseException] = []

        def waiting_client() -> None:
            try:
                requests.post(srv.completions_url, json={"prompt": "x"}, timeout=10)
            except requests.RequestException as exc:
                errors.append(exc)

        t = threading.Thread(target=waiting_client)
        t.start()
        _until(lambda: srv.stats()["faults"]["hang"] == 2, "the second client hanging")
    finally:
        srv.stop()
    t.join(60)
    assert not t.is_alive(), "stop() did not release the hanging client"
    # Released by stop(), not by its own 10 s timeout (that would be a ReadTimeout).
    assert len(errors) == 1
    assert isinstance(errors[0], requests.ConnectionError)


def test_null_logprobs() -> None:
    with EvalchemyTestServer(ENTRIES, null_logprobs=True) as srv:
        r = _complete(srv, prompt=[encode("[mc-0] Paris")], max_tokens=1, logprobs=1, echo=True)
        lp = r.json()["choices"][0]["logprobs"]
        assert len(lp["tokens"]) == len(encode("[mc-0] Paris")) + 1
        assert set(lp["token_logprobs"]) == {None}


def test_no_tokenizer_endpoints() -> None:
    with EvalchemyTestServer(ENTRIES, no_tokenizer_endpoints=True) as srv:
        assert requests.get(f"{srv.url}/tokenizer_info", timeout=10).status_code == 404
        assert (
            requests.post(f"{srv.url}/tokenize", json={"prompt": "a"}, timeout=10).status_code
            == 404
        )
        assert requests.post(f"{srv.url}/detokenize", json={"tokens": [4]}).status_code == 404
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 200


def test_chat_only() -> None:
    with EvalchemyTestServer(ENTRIES, chat_only=True) as srv:
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 404
        r = requests.post(
            srv.chat_completions_url,
            json={
                "model": srv.model,
                "messages": [{"role": "user", "content": "[gen-0] Q"}],
                "stop": ["\n"],
            },
            timeout=10,
        )
        assert r.status_code == 200
        out = r.json()
        assert out["object"] == "chat.completion"
        assert out["choices"][0]["message"] == {"role": "assistant", "content": " 42"}
        assert out["choices"][0]["finish_reason"] == "stop"


def test_api_key() -> None:
    with EvalchemyTestServer(ENTRIES, api_key="sekrit") as srv:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "}):
            r = requests.get(f"{srv.url}/v1/models", headers=headers, timeout=10)
            assert r.status_code == 401
            assert r.json() == {"error": "Unauthorized"}
        ok = {"Authorization": "Bearer sekrit"}
        assert requests.get(f"{srv.url}/v1/models", headers=ok, timeout=10).status_code == 200
        r = requests.post(
            srv.completions_url,
            json={"model": srv.model, "prompt": "x", "max_tokens": 1},
            headers=ok,
            timeout=10,
        )
        assert r.status_code == 200
        # Like vLLM, the tokenizer endpoints stay open.
        assert requests.get(f"{srv.url}/tokenizer_info", timeout=10).status_code == 200
        assert requests.post(f"{srv.url}/tokenize", json={"prompt": "a"}, timeout=10).ok


# --- the command line ------------------------------------------------------------------------------------------


def test_cli_announces_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "url.txt"
    proc = spawn(
        [
            sys.executable,
            "-m",
            "pytest_evalchemy.testing.server",
            "--model",
            "cli-model",
            "--port-file",
            str(port_file),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        prefix, url = line.split()
        assert prefix == READY_PREFIX
        assert port_file.read_text().strip() == url
        models = requests.get(f"{url}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == "cli-model"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""  # exactly one line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- end to end with lm-eval -----------------------------------------------------------------------------------

MC_CHOICES = ["alpha", "bravo", "charlie", "delta"]
N_DOCS = 8


def _write_tasks(tmp_path: Path) -> list[AnswerEntry]:
    """Write two offline lm-eval tasks (multiple choice with 2-shot, generation) and their answer key."""
    entries: list[AnswerEntry] = []
    mc_rows, gen_rows = [], []
    for i in range(N_DOCS):
        answer = i % len(MC_CHOICES)
        mc_rows.append(
            {
                "question": f"[mc-{i}] Which word is number {answer}?",
                "choices": MC_CHOICES,
                "answer": answer,
            }
        )
        entries.append(
            AnswerEntry(
                "tiny_mc",
                i,
                f"[mc-{i}]",
                "choice",
                " " + MC_CHOICES[answer],
                "",
                default_known("tiny_mc", i),
            )
        )
        gen_rows.append({"question": f"[gen-{i}] What is {i} plus one?", "answer": str(i + 1)})
        entries.append(
            AnswerEntry(
                "tiny_gen",
                i,
                f"[gen-{i}]",
                "generate",
                f" {i + 1}\nQuestion: more",
                " no idea\n",
                default_known("tiny_gen", i),
            )
        )
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in (("mc", mc_rows), ("gen", gen_rows)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "hf" / "datasets"

    def header(task: str, data_file: Path) -> str:
        # Absolute data_files: a relative path would resolve against the working directory.
        return (
            f"task: {task}\n"
            "dataset_path: json\n"
            "dataset_kwargs:\n"
            f"  data_files:\n    test: {data_file}\n"
            f"  cache_dir: {cache}\n"
            "test_split: test\n"
            'doc_to_text: "{{question}}\\nAnswer:"\n'
        )

    (tmp_path / "tiny_mc.yaml").write_text(
        header("tiny_mc", data / "mc.jsonl")
        + """output_type: multiple_choice
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
num_fewshot: 2
metric_list:
  - metric: acc
"""
    )
    (tmp_path / "tiny_gen.yaml").write_text(
        header("tiny_gen", data / "gen.jsonl")
        + """output_type: generate_until
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
"""
    )
    return entries


def test_lm_eval_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"),
        "TQDM_DISABLE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # lm-eval runs `git describe` in the working directory
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    entries = _write_tasks(tmp_path)
    known = sum(default_known("tiny_mc", i) for i in range(N_DOCS)) / N_DOCS
    assert 0 < known < 1  # the check must tell right from wrong

    with EvalchemyTestServer(entries, max_model_len=4096) as srv:
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={
                "model": srv.model,
                "base_url": srv.completions_url,
                "tokenizer_backend": "remote",
                "tokenized_requests": True,
                "max_length": 4096,
                "max_retries": 1,
            },
            tasks=["tiny_mc", "tiny_gen"],
            task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
            limit=N_DOCS,
            log_samples=False,
            bootstrap_iters=0,
            torch_random_seed=None,
        )
        stats = srv.stats()

    assert out is not None
    assert out["results"]["tiny_mc"]["acc,none"] == known
    assert out["results"]["tiny_gen"]["exact_match,strip"] == known
    # One request per choice plus one per generation, nothing failed.
    assert stats["completions"] == N_DOCS * len(MC_CHOICES) + N_DOCS
    assert set(stats["faults"].values()) == {0}


def _until_served(url: str) -> requests.Response:
    """GET ``url`` until the server answers (no timing asserted: only that it does)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return requests.get(url, timeout=5)
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the server never came up"
            time.sleep(0.05)


def test_first_answers_script_the_first_requests_of_any_path() -> None:
    script = ["503", "reset", "truncated", "invalid_json", "429"]
    with EvalchemyTestServer(ENTRIES, first_answers=script, retry_after=2) as srv:
        first = requests.get(f"{srv.url}/v1/models", timeout=5)
        assert first.status_code == 503
        assert first.headers["Retry-After"] == "2"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{srv.url}/tokenizer_info", timeout=5)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(f"{srv.url}/v1/models", timeout=5)
        garbled = requests.get(f"{srv.url}/v1/models", timeout=5)
        assert garbled.status_code == 200
        with pytest.raises(requests.exceptions.JSONDecodeError):
            garbled.json()
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 429
        assert _complete(srv, prompt="x", max_tokens=1).status_code == 200
        assert srv.stats()["scripted"] == {k: 1 for k in script}
    with pytest.raises(ValueError, match="unknown fault 'hiccup'"):
        EvalchemyTestServer(ENTRIES, first_answers=["hiccup"])


def test_a_delayed_start_holds_the_port_and_refuses_until_it_listens() -> None:
    # Refusing is checked on a server whose delay outlasts the test, so a slow machine cannot
    # reach its listening time first; listening after the delay on one that waits briefly.
    never = EvalchemyTestServer(ENTRIES).start(delay=3600)
    try:
        assert never.port != 0  # known at once
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{never.url}/v1/models", timeout=5)
    finally:
        never.stop()  # returns: a server that never listened stops too
    srv = EvalchemyTestServer(ENTRIES).start(delay=0.2)
    try:
        assert _until_served(f"{srv.url}/v1/models").status_code == 200
    finally:
        srv.stop()


def test_away_after_goes_away_and_comes_back_on_the_same_port_keeping_counters() -> None:
    with EvalchemyTestServer(ENTRIES, away_after=2, away_for=0.5) as srv:
        port = srv.port
        for _ in range(2):
            assert _complete(srv, prompt="x", max_tokens=1).status_code == 200
        with pytest.raises(requests.ConnectionError):
            _complete(srv, prompt="y", max_tokens=1)  # the third: reset, and the server goes
        _until(lambda: srv.stats()["restarts"] == 1, "the server back after going away")
        assert srv.port == port
        assert _complete(srv, prompt="y", max_tokens=1).status_code == 200
        stats = srv.stats()
        assert stats["faults"]["away"] == 1
        assert stats["completions"] == 4  # counted across the restart
        assert stats["answered"] == 3
        assert stats["answered_twice"] == 1  # "x" twice
