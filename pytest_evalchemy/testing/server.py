"""A dependency-free stand-in for vLLM's OpenAI-compatible server, with a scripted "model".

It speaks enough of vLLM's protocol for lm-eval's ``local-completions`` model with
``tokenizer_backend="remote"`` and ``tokenized_requests=True``: ``/v1/models``, ``/v1/completions``
(echo + logprobs for loglikelihood, generation with stop strings), and the tokenizer endpoints that vLLM
serves with ``--enable-tokenizer-info-endpoint``. The simulated model answers each document of an answer key
right or wrong as ``AnswerEntry.known`` says, so a test knows the exact accuracy lm-eval must report.

Tokenizer: byte level. Token id = byte value + 3; ids 0, 1, 2 are ``<unk>``, ``<s>`` (BOS) and ``</s>`` (EOS).
Like Hugging Face tokenizers, the text ``"<s>"`` etc. encodes to the special id: lm-eval's remote tokenizer
finds the EOS/BOS ids by encoding ``eos_token``/``bos_token``.

Scoring rule (loglikelihood, ``echo: true``): the document whose marker has the largest ``rfind`` position in
the decoded prompt is the current one (few-shot examples come earlier). No document: every token -2.0 (a
little lower under ``weights``). A ``choice`` document: every prompt token gets -0.05 when ``text.endswith(correct) == known``, else -3.0, so a
known document scores its right choice highest and an unknown one scores every wrong choice higher.

Generation: a ``generate`` document yields ``correct`` when known, else ``wrong``; anything else yields
``" I do not know.\\n\\n"``. Stop strings are honoured the way vLLM does (cut, ``finish_reason: "stop"``,
``stop_reason``), then ``max_tokens`` (bytes).

Chat: ``/tokenizer_info`` carries ``chat_template`` (``CHAT_TEMPLATE`` unless ``chat_template=None``),
``/tokenize`` takes ``messages`` and renders them with it, and ``/v1/chat/completions`` renders the messages
and answers like a completion of the rendered text (400 without a template, as vLLM answers).

Reasoning (``reasoning="content"`` or ``"field"``): every generation starts with thinking,
``<think>THINKING</think>``, that holds ``REASONING_STOP`` (the offline gsm8k's stop string) and a wrong
answer (``#### -999``); the answer after it is the plain model's. Stop strings and ``max_tokens`` apply to
the whole output, thinking included, as on a real server. ``"field"`` moves the thinking of a chat answer
into ``message.reasoning`` (vLLM's ``--reasoning-parser``); ``"content"`` leaves it in the text.

Fault switches (all off by default) simulate slow, overloaded, flaky or misconfigured servers; ``GET /stats``
reports request counts and the peak number of concurrent completion requests.

CLI: ``python -m pytest_evalchemy.testing.server [--benchmarks DIR] [--port 0] ...`` prints one line
``EVALCHEMY_TEST_SERVER http://127.0.0.1:PORT`` when ready and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import io
import json
import math
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    from pytest_evalchemy.testing.answer_key import AnswerEntry

DEFAULT_MODEL = "evalchemy-test-model"
DEFAULT_MAX_MODEL_LEN = 16384
READY_PREFIX = "EVALCHEMY_TEST_SERVER"

# --- tokenizer -------------------------------------------------------------------------------------------------

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
ID_OFFSET = 3
VOCAB_SIZE = 256 + ID_OFFSET
# Token strings as vLLM reports them in logprobs: the single byte decoded as latin-1.
TOKEN_STRS: tuple[str, ...] = (*SPECIAL_TOKENS, *(chr(b) for b in range(256)))
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
_SPECIAL_IDS = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
_SPECIAL_BYTES = tuple(s.encode("ascii") for s in SPECIAL_TOKENS)

# Log probabilities of the simulated model.
LP_AGREE = -0.05  # the prompt ends the way the model believes (and every generated token)
LP_DISAGREE = -3.0  # the prompt ends the other way
LP_UNKNOWN_DOC = -2.0  # no answer-key marker in the prompt
FALLBACK_GENERATION = " I do not know.\n\n"

# A small chat template in the style of Hugging Face models: BOS, one turn per message, each
# closed by EOS. Its special tokens are the tokenizer's own strings.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
THINK_START, THINK_END = "<think>", "</think>"
REASONING_STOP = "Question:"
# The simulated reasoning model's thinking: a stop string of the offline gsm8k and a wrong answer
# (both of its filters would take -999), before it settles on the plain model's answer.
THINKING = (
    "\nA first guess. Question: is the answer -999?\n#### -999\n"
    "That cannot be right; work it out properly.\n"
)
REASONING_MODES = ("content", "field")


def encode(text: str, add_special_tokens: bool = False) -> list[int]:
    """Encode text to byte-level ids; special-token strings map to their ids, BOS first if asked."""
    ids = [BOS_ID] if add_special_tokens else []
    if "<" not in text:  # fast path: no special token possible
        ids.extend(b + ID_OFFSET for b in text.encode("utf-8"))
        return ids
    for piece in _SPECIAL_RE.split(text):
        if piece in _SPECIAL_IDS:
            ids.append(_SPECIAL_IDS[piece])
        elif piece:
            ids.extend(b + ID_OFFSET for b in piece.encode("utf-8"))
    return ids


def decode(ids: Sequence[int]) -> str:
    """Decode ids (assumed in range) to text; special ids become their strings, bad UTF-8 becomes U+FFFD."""
    if not ids:
        return ""
    if min(ids) >= ID_OFFSET:
        return bytes(t - ID_OFFSET for t in ids).decode("utf-8", errors="replace")
    out = bytearray()
    for t in ids:
        if t < ID_OFFSET:
            out += _SPECIAL_BYTES[t]
        else:
            out.append(t - ID_OFFSET)
    return out.decode("utf-8", errors="replace")


# --- errors ----------------------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class APIError(Exception):
    """An error answered with vLLM's error JSON ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def payload(self) -> dict[str, Any]:
        err_type = _ERROR_TYPES.get(self.status, "Error")
        return {
            "error": {
                "message": self.message,
                "type": err_type,
                "param": self.param,
                "code": self.status,
            }
        }


def parse_flips(specs: Sequence[str]) -> set[tuple[str, int]]:
    """``{(task, doc_id)}`` from ``["mini_arc:0", "mini_arc:3,mini_mmlu:1"]``."""
    out = set()
    for spec in specs:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            task, _, doc = part.rpartition(":")
            if not task or not doc.isdigit():
                raise ValueError(f"--flip {part!r}: expected TASK:DOC_ID, e.g. mini_arc:3")
            out.add((task, int(doc)))
    return out


def unmarked_logprob(weights: str) -> float:
    """The logprob of each token of text with no answer-key marker under the simulated
    ``weights``: ``LP_UNKNOWN_DOC``, moved by 0.01 to 0.50 per token for a label (the same
    label, the same offset)."""
    if not weights:
        return LP_UNKNOWN_DOC
    return LP_UNKNOWN_DOC - 0.01 * (zlib.crc32(weights.encode("utf-8")) % 50 + 1)


def _bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


# --- the server ------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A burst of concurrent clients (aiohttp with num_concurrent=32) overflows the default backlog of 5, and
    # a dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 128

    app: EvalchemyTestServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away while its next request line is read (an item cancelling its
        # requests in flight) is no server error: socketserver would print a traceback for it.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class EvalchemyTestServer:
    """vLLM look-alike whose simulated model answers an answer key right or wrong on purpose.

    Fault switches: ``latency`` (seconds slept per completion request), ``max_concurrency`` (completion
    requests served at once; the others wait), ``fail_first``/``fail_status``/``retry_after``,
    ``reset_first`` (close the connection without answering), ``invalid_json_first`` (a truncated 200 body),
    ``fail_after`` (every completion request after the first N fails with ``fail_status``: a
    server that breaks for good once the endpoint check is done), ``hang_after`` (requests
    after the first N hang until ``stop()``), ``hold_after`` (requests after the first N wait,
    holding their ``max_concurrency`` slot, until ``release()``, then are answered;
    ``faults["held"]`` counts them: a test waits for that event, not for a duration),
    ``null_logprobs``, ``no_tokenizer_endpoints``, ``no_health`` (404 on ``/health``: a server
    that is not vLLM), ``chat_only``, ``reject_over`` (429 for a completion request that
    arrives while that many are already in flight: a server with a hard admission limit; a
    refused request stops counting before its 429 leaves, so a client that keeps at most
    ``reject_over`` in flight is never refused);
    ``flip`` ("TASK:DOC_ID" strings) inverts the answer of those documents. ``weights`` (a
    label; "" by default) simulates other weights under the same model name: text with no
    answer-key marker (the endpoint check's canary) scores ``unmarked_logprob`` instead of
    ``LP_UNKNOWN_DOC``, a small offset derived from the label, while documents keep their
    logprobs, so every score stays the same and only the canary changes; a ``flip`` is other
    weights too and moves the canary the same way.
    ``echo_off_by_one``: echoed prompt logprobs miss their first token (a proxy that eats or a
    server that adds a token). Tokenizer and model switches: ``adds_bos`` (True, like Llama:
    ``add_special_tokens`` puts ``<s>`` before a text; False, like GPT-2 or Qwen: it adds
    nothing, and ``/tokenizer_info`` says ``add_bos_token: false``); ``bos_trained`` (a model
    trained with the BOS: a prompt that does not start with exactly one ``<s>`` gets every
    document's belief inverted, for loglikelihood and generation alike, so a missing or a
    doubled BOS changes the scores). Model switches:
    ``chat_template`` (None: no template), ``reasoning`` (None, ``"content"`` or ``"field"``);
    ``record_prompts`` keeps every prompt in ``prompts``. The ``*_first`` faults take turns, in
    the order reset, fail,
    invalid JSON: with ``reset_first=1, fail_first=2`` request 1 is reset and requests 2-3 fail.
    ``basic_auth="user:password"``: every
    path but ``/health`` and ``/stats`` answers 401 without that HTTP basic auth (a proxy in
    front of the server); ``api_key`` asks for ``Authorization: Bearer KEY`` on ``/v1/*``.
    ``ssl_context`` (a server-side ``ssl.SSLContext``) serves https; ``url`` then says https.

    Faults of the server as a whole: ``first_answers`` scripts the first answers of any kind
    (every path but ``/stats``), one per request in order: an HTTP status (``"500"``,
    ``"503"``, ``"429"``; with ``Retry-After`` when ``retry_after`` is set), ``"reset"``,
    ``"truncated"`` (headers, half the body, then the connection closes) or
    ``"invalid_json"``. ``start(delay=S)`` holds the port from the start but listens only after
    S seconds (connection refused until then: a server loading its weights). ``away_after=N``,
    ``away_for=S``: completion request N+1 is reset and the server stops listening for S
    seconds, then serves again on the same port, its counters kept (a restart).
    ``stats()["answered"]`` counts completion answers written (counted before the first byte
    leaves, taken back if the write fails: a client that has its answer finds it counted),
    ``"answered_twice"`` the prompts answered more than once. Every counter of a request is
    updated before its reply leaves, so a stats read right after a reply sees it.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        entries: Sequence[AnswerEntry] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = DEFAULT_MODEL,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        api_key: str | None = None,
        latency: float = 0.0,
        max_concurrency: int | None = None,
        fail_first: int = 0,
        fail_status: int = 503,
        fail_after: int | None = None,
        basic_auth: str | None = None,
        retry_after: float | None = None,
        null_logprobs: bool = False,
        no_tokenizer_endpoints: bool = False,
        no_health: bool = False,
        chat_only: bool = False,
        chat_template: str | None = CHAT_TEMPLATE,
        reasoning: str | None = None,
        record_prompts: bool = False,
        hang_after: int | None = None,
        hold_after: int | None = None,
        reset_first: int = 0,
        invalid_json_first: int = 0,
        reject_over: int | None = None,
        verbose: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        first_answers: Sequence[str] = (),
        away_after: int | None = None,
        away_for: float = 0.0,
        flip: Sequence[str] = (),
        adds_bos: bool = True,
        bos_trained: bool = False,
        echo_off_by_one: bool = False,
        weights: str = "",
    ) -> None:
        # A second model that differs from the first on known documents: "TASK:DOC_ID" entries
        # whose answer is inverted (right becomes wrong and wrong right).
        self.flipped = parse_flips(flip)
        self.entries = [
            replace(e, known=not e.known) if (e.task, e.index) in self.flipped else e
            for e in entries
        ]
        # Other weights (a label, or the flips): unmarked text scores a little differently.
        self.weights = weights or ",".join(sorted(f"{t}:{d}" for t, d in self.flipped))
        self.unmarked_logprob = unmarked_logprob(self.weights)
        self.host = host
        self.port = port
        self.model = model
        self.max_model_len = max_model_len
        self.api_key = api_key
        self.latency = latency
        self.max_concurrency = max_concurrency
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.fail_after = fail_after
        self.basic_auth = basic_auth
        self.retry_after = retry_after
        self.null_logprobs = null_logprobs
        self.no_tokenizer_endpoints = no_tokenizer_endpoints
        self.no_health = no_health
        self.chat_only = chat_only
        self.chat_template = chat_template
        if reasoning is not None and reasoning not in REASONING_MODES:
            raise ValueError(
                f"reasoning must be one of {REASONING_MODES} or None, got {reasoning!r}"
            )
        self.reasoning = reasoning
        # Every prompt answered, as (endpoint, token ids or rendered chat text), to compare
        # what two clients sent.
        self.prompts: list[tuple[str, Any]] | None = [] if record_prompts else None
        self.hang_after = hang_after
        self.hold_after = hold_after
        self.reset_first = reset_first
        self.invalid_json_first = invalid_json_first
        self.reject_over = reject_over
        self.verbose = verbose
        self.ssl_context = ssl_context  # serve https with this (server-side) context
        for kind in first_answers:
            if kind not in _ANSWER_FAULTS and not kind.isdigit():
                raise ValueError(f"first_answers: unknown fault {kind!r}")
        self.first_answers = list(first_answers)
        self.away_after = away_after
        self.away_for = away_for
        self.adds_bos = adds_bos
        self.bos_trained = bos_trained
        self.echo_off_by_one = echo_off_by_one

        self._markers = [(e.marker, e) for e in self.entries]
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
        self._stopping = threading.Event()
        self._listen_now = threading.Event()  # ends a start(delay=...) early
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._serve_lock = threading.Lock()
        self._final = threading.Event()
        self._released = threading.Event()  # release(): held requests go on
        self._serving = False
        self._reset_counters()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, delay: float = 0.0) -> EvalchemyTestServer:
        """Bind, listen and serve in a daemon thread; returns self. With ``delay`` the port is
        bound at once (``port`` and ``url`` are known) but listened on only after ``delay``
        seconds (or, ``delay=math.inf``, until ``listen_now()``): connecting is refused until
        then."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._listen_now.clear()
        self._final.clear()
        httpd = _HTTPServer((self.host, self.port), _Handler, bind_and_activate=False)
        try:
            httpd.server_bind()
        except OSError:
            httpd.server_close()
            raise
        if self.ssl_context is not None:
            httpd.socket = self.ssl_context.wrap_socket(httpd.socket, server_side=True)
        httpd.app = self
        self._httpd = httpd
        self.port = httpd.server_address[1]

        def listen() -> bool:
            with self._serve_lock:
                if self._stopping.is_set():
                    return False
                httpd.server_activate()
                self._serving = True
                return True

        def serve() -> None:
            # A bound socket that does not listen refuses connections (Linux answers RST).
            if delay > 0:
                self._listen_now.wait(None if math.isinf(delay) else delay)
                if not listen():  # stopped meanwhile
                    return
            httpd.serve_forever(poll_interval=0.05)

        if delay <= 0:
            listen()  # connectable when start() returns

        self._thread = threading.Thread(target=serve, name="evalchemy-test-server", daemon=True)
        self._thread.start()
        return self

    def listen_now(self) -> None:
        """Listen at once: a server started with a delay stops refusing connections."""
        self._listen_now.set()

    def restart(self, down_for: float) -> None:
        """Stop serving now and serve again on the same port after ``down_for`` seconds, the
        counters kept (in a thread: returns at once)."""

        def cycle() -> None:
            self.stop(final=False)
            if not self._final.wait(down_for):  # a stop() meanwhile: stay stopped
                self.start()
                with self._lock:
                    self._restarts += 1

        threading.Thread(target=cycle, name="evalchemy-test-server-restart", daemon=True).start()

    def release(self) -> None:
        """Let the requests ``hold_after`` holds (and every later one) be answered."""
        self._released.set()

    def stop(self, final: bool = True) -> None:
        """Stop serving, release hung requests and drop open keep-alive connections (and,
        ``final``, cancel a ``restart`` that is waiting to serve again)."""
        if final:
            self._final.set()
            self._released.set()
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        self._listen_now.set()  # a delayed start that still waits: give up listening
        with self._serve_lock:
            serving, self._serving = self._serving, False
        if serving:  # shutdown() waits for serve_forever, which a delayed start never ran
            httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:  # idle keep-alive threads would otherwise block in readline() forever
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> EvalchemyTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8123``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def completions_url(self) -> str:
        """The URL lm-eval's ``base_url`` takes."""
        return f"{self.url}/v1/completions"

    @property
    def chat_completions_url(self) -> str:
        return f"{self.url}/v1/chat/completions"

    # -- statistics --------------------------------------------------------------------------------------------

    def _reset_counters(self) -> None:
        self._requests: dict[str, int] = {}
        self._completion_seq = 0
        self._prompts = 0
        self._in_flight = 0
        self._max_concurrent = 0
        self._active = 0
        self._max_active = 0
        self._faults = {
            "reset": 0,
            "fail": 0,
            "invalid_json": 0,
            "hang": 0,
            "rejected": 0,
            "held": 0,
        }
        self._answer_seq = 0  # requests of any kind, for first_answers
        self._scripted: dict[str, int] = {}
        self._answered: dict[str, int] = {}
        self._restarts = 0
        self._admitted_now = 0
        self._max_admitted = 0  # completion requests in flight at once, the rejected not counted

    def stats(self) -> dict[str, Any]:
        """Snapshot: requests per path, completion requests, prompts answered, peak concurrency, faults."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "completions": self._completion_seq,
                "prompts": self._prompts,
                "in_flight": self._in_flight,
                # completion requests received and not yet answered, at the peak (includes waiting ones)
                "max_concurrent": self._max_concurrent,
                # completion requests holding a max_concurrency slot, at the peak
                "max_active": self._max_active,
                # completion requests in flight at once that reject_over let in, at the peak
                "max_admitted": self._max_admitted,
                "faults": dict(self._faults),
                "scripted": dict(self._scripted),
                "answered": sum(self._answered.values()),
                "answered_twice": sum(1 for n in self._answered.values() if n > 1),
                "restarts": self._restarts,  # finished restart() cycles
            }

    def reset_stats(self) -> None:
        """Zero all counters, including the ones the ``*_first`` and ``hang_after`` faults count with."""
        with self._lock:
            self._reset_counters()

    def _count(self, path: str) -> None:
        with self._lock:
            self._requests[path] = self._requests.get(path, 0) + 1

    def _begin_completion(self) -> int:
        with self._lock:
            self._completion_seq += 1
            self._in_flight += 1
            self._max_concurrent = max(self._max_concurrent, self._in_flight)
            return self._completion_seq

    def _admitted(self) -> bool:
        """Whether reject_over lets the request just begun in (else it counts as rejected)."""
        with self._lock:
            if self.reject_over is not None and self._in_flight > self.reject_over:
                self._faults["rejected"] += 1
                return False
            self._admitted_now += 1
            self._max_admitted = max(self._max_admitted, self._admitted_now)
            return True

    def _end_admitted(self) -> None:
        with self._lock:
            self._admitted_now -= 1

    def _end_completion(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _scripted_fault(self) -> str | None:
        """The ``first_answers`` fault of this request, if any (counts every request)."""
        with self._lock:
            self._answer_seq += 1
            if self._answer_seq > len(self.first_answers):
                return None
            kind = self.first_answers[self._answer_seq - 1]
            self._scripted[kind] = self._scripted.get(kind, 0) + 1
            return kind

    def _record_answer(self, raw: bytes) -> str:
        """Count one answer to this request body; returns the key to take it back with."""
        try:
            body = json.loads(raw)
            # What was asked: a completion's prompt, a chat request's messages.
            key = json.dumps(body.get("prompt", body.get("messages")), sort_keys=True)
        except (ValueError, AttributeError):
            key = raw.decode("utf-8", "replace")
        with self._lock:
            self._answered[key] = self._answered.get(key, 0) + 1
        return key

    def _unrecord_answer(self, key: str) -> None:
        """Take back an answer counted by ``_record_answer`` whose write failed."""
        with self._lock:
            self._answered[key] -= 1
            if not self._answered[key]:
                del self._answered[key]

    def _fault_for(self, seq: int) -> str | None:
        """Which fault request number ``seq`` (1-based) gets, if any."""
        fault = None
        if self.hang_after is not None and seq > self.hang_after:
            fault = "hang"
        elif seq <= self.reset_first:
            fault = "reset"
        elif seq <= self.reset_first + self.fail_first:
            fault = "fail"
        elif seq <= self.reset_first + self.fail_first + self.invalid_json_first:
            fault = "invalid_json"
        if fault is None and self.fail_after is not None and seq > self.fail_after:
            fault = "fail"
        if fault is None and self.away_after is not None and seq == self.away_after + 1:
            fault = "away"
        if fault is not None:
            with self._lock:
                self._faults[fault] = self._faults.get(fault, 0) + 1
        return fault

    def _hold(self, seq: int) -> None:
        """Wait for ``release()`` when ``hold_after`` holds request number ``seq``."""
        if self.hold_after is None or seq <= self.hold_after or self._released.is_set():
            return
        with self._lock:
            self._faults["held"] += 1
        self._released.wait()

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of the ``max_concurrency`` slots (if capped) for the simulated compute."""
        if self._slots is not None:
            self._slots.acquire()
        try:
            with self._lock:
                self._active += 1
                self._max_active = max(self._max_active, self._active)
            try:
                if self.latency > 0:
                    self._stopping.wait(self.latency)  # cut short by stop()
                yield
            finally:
                with self._lock:
                    self._active -= 1
        finally:
            if self._slots is not None:
                self._slots.release()

    # -- the simulated model -----------------------------------------------------------------------------------

    def current_entry(self, text: str) -> AnswerEntry | None:
        """The entry whose marker occurs last in ``text``: the document being asked about."""
        best: AnswerEntry | None = None
        best_pos = -1
        for marker, entry in self._markers:
            pos = text.rfind(marker)
            if pos > best_pos:
                best, best_pos = entry, pos
        return best

    def _knows(self, entry: AnswerEntry, text: str) -> bool:
        """Whether the model answers ``entry`` right after the prompt ``text``: a model
        trained with the BOS is wrong where right and right where wrong without exactly one."""
        if not self.bos_trained:
            return entry.known
        bos = SPECIAL_TOKENS[BOS_ID]
        one_bos = text.startswith(bos) and not text.startswith(bos * 2)
        return entry.known if one_bos else not entry.known

    def prompt_logprob(self, text: str) -> float:
        """The logprob every prompt token gets under the scoring rule."""
        entry = self.current_entry(text)
        if entry is None:
            return self.unmarked_logprob
        if entry.kind != "choice":
            return LP_UNKNOWN_DOC
        agrees = _ends_with_choice(text, entry.correct) == self._knows(entry, text)
        return LP_AGREE if agrees else LP_DISAGREE

    def generation(self, text: str) -> str:
        """The full text the model would generate after ``text``, before stop strings and max_tokens."""
        entry = self.current_entry(text)
        if entry is None or entry.kind != "generate":
            answer = FALLBACK_GENERATION
        else:
            answer = entry.correct if self._knows(entry, text) else entry.wrong
        if self.reasoning is not None:
            return f"{THINK_START}{THINKING}{THINK_END}{answer}"
        return answer

    def _record(self, endpoint: str, prompt: Any) -> None:
        if self.prompts is not None:
            with self._lock:
                self.prompts.append((endpoint, prompt))

    def render_chat(self, messages: object, add_generation_prompt: bool = True) -> str:
        """The prompt text of a chat request: the messages rendered with the chat template."""
        if self.chat_template is None:
            # vLLM's answer when the tokenizer has no template.
            raise _bad_request(
                "As of transformers v4.44, default chat template is no longer allowed, so you must "
                "provide a chat template if the tokenizer does not define one."
            )
        if not isinstance(messages, list) or not messages:
            raise _bad_request("'messages' must be a non-empty list", "messages")
        chat = []
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str) or not isinstance(msg.get("role"), str):
                raise _bad_request("each message needs a string 'role' and 'content'", "messages")
            chat.append({"role": msg["role"], "content": content})
        # Imported here: only chat requests need jinja2 (lm-eval's dependency).
        from pytest_evalchemy.run.chat_template import render, special_tokens

        return render(
            self.chat_template,
            chat,
            add_generation_prompt=add_generation_prompt,
            tokens=special_tokens(self.tokenizer_info_payload()),
        )

    # -- endpoint logic ----------------------------------------------------------------------------------------

    def models_payload(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "evalchemy-test",
                    "root": self.model,
                    "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [],
                }
            ],
        }

    def tokenizer_info_payload(self) -> dict[str, Any]:
        return {
            "tokenizer_class": "EvalchemyByteTokenizer",
            "bos_token": SPECIAL_TOKENS[BOS_ID],
            "eos_token": SPECIAL_TOKENS[EOS_ID],
            "unk_token": SPECIAL_TOKENS[UNK_ID],
            "pad_token": None,
            "add_bos_token": self.adds_bos,
            "vocab_size": VOCAB_SIZE,
            "model_max_length": self.max_model_len,
            **({"chat_template": self.chat_template} if self.chat_template is not None else {}),
        }

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        if "messages" in body:
            # vLLM's chat form: render the template; add_special_tokens defaults to False there.
            prompt = self.render_chat(
                body["messages"], bool(body.get("add_generation_prompt", True))
            )
            add_special = bool(body.get("add_special_tokens", False))
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise _bad_request("'prompt' must be a string", "prompt")
            add_special = bool(body.get("add_special_tokens", True)) and self.adds_bos
        ids = encode(prompt, add_special_tokens=add_special)
        token_strs = [TOKEN_STRS[t] for t in ids] if body.get("return_token_strs") else None
        return {
            "count": len(ids),
            "max_model_len": self.max_model_len,
            "tokens": ids,
            "token_strs": token_strs,
        }

    def detokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = body.get("tokens")
        if not _is_id_list(ids):
            raise _bad_request("'tokens' must be a list of integers", "tokens")
        _check_vocab(ids)
        return {"prompt": decode(ids)}

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.model:
            raise APIError(404, f"The model `{model}` does not exist.", "model")

    def _check_length(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt > self.max_model_len:
            raise _bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt "
                f"contains at least {n_prompt} input tokens. Please reduce the length of the input prompt.",
                "input_tokens",
            )
        if n_prompt + max_tokens > self.max_model_len:
            raise _bad_request(
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                f"context length is {self.max_model_len} tokens and your request has {n_prompt} input tokens "
                f"({max_tokens} > {self.max_model_len} - {n_prompt}).",
                "max_tokens",
            )

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a ``/v1/completions`` request body."""
        self._check_model(body)
        special = bool(body.get("add_special_tokens", True)) and self.adds_bos
        prompts = _parse_prompts(body.get("prompt"), add_special_tokens=special)
        echo = bool(body.get("echo", False))
        logprobs = body.get("logprobs")
        if logprobs is not None and (
            not isinstance(logprobs, int) or isinstance(logprobs, bool) or logprobs < 0
        ):
            raise _bad_request("'logprobs' must be a non-negative integer", "logprobs")
        stops = _parse_stop(body.get("stop"))
        include_stop = bool(body.get("include_stop_str_in_output", False))
        max_tokens_req = body.get("max_tokens", 16)  # the OpenAI/vLLM default for completions

        choices = []
        n_prompt_total = n_completion_total = 0
        for index, (ids, original) in enumerate(prompts):
            max_tokens = self.max_model_len - len(ids) if max_tokens_req is None else max_tokens_req
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
                raise _bad_request("'max_tokens' must be a non-negative integer", "max_tokens")
            self._check_length(len(ids), max_tokens)
            text = decode(ids)
            gen_text, gen_ids, n_generated, finish, stop_reason = _apply_limits(
                self.generation(text), stops, max_tokens, include_stop
            )
            n_prompt_total += len(ids)
            n_completion_total += n_generated
            self._record("completions", tuple(ids))
            prompt_text = original if original is not None else text
            choice: dict[str, Any] = {
                "index": index,
                "text": prompt_text + gen_text if echo else gen_text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": stop_reason,
            }
            if logprobs is not None:
                choice["logprobs"] = self._logprobs(
                    ids if echo else [], text if echo else "", gen_ids
                )
            choices.append(choice)
        with self._lock:
            self._prompts += len(prompts)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": n_prompt_total,
                "total_tokens": n_prompt_total + n_completion_total,
                "completion_tokens": n_completion_total,
            },
        }

    def _logprobs(
        self, prompt_ids: list[int], prompt_text: str, gen_ids: list[int]
    ) -> dict[str, Any]:
        """vLLM's completions logprobs block over echoed prompt tokens (first one null) and generated tokens."""
        all_ids = prompt_ids + gen_ids
        tokens = [TOKEN_STRS[t] for t in all_ids]
        offsets = []
        pos = 0
        for tok in tokens:
            offsets.append(pos)
            pos += len(tok)
        if self.null_logprobs:
            # A server that silently ignores prompt logprobs.
            return {
                "tokens": tokens,
                "token_logprobs": [None] * len(tokens),
                "top_logprobs": [None] * len(tokens),
                "text_offset": offsets,
            }
        values: list[float | None] = []
        if prompt_ids:
            lp = self.prompt_logprob(prompt_text)
            values = [None] + [lp] * (len(prompt_ids) - 1)
        values += [LP_AGREE] * len(gen_ids)
        if self.echo_off_by_one and prompt_ids:
            tokens, values, offsets = tokens[1:], values[1:], offsets[1:]
        # Each position's top_logprobs holds the token itself, so lm-eval's greedy check passes.
        top = [None if v is None else {tok: v} for tok, v in zip(tokens, values, strict=True)]
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": top,
            "text_offset": offsets,
        }

    def chat_complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a ``/v1/chat/completions`` request body."""
        self._check_model(body)
        text = self.render_chat(body.get("messages"))
        self._record("chat", text)
        n_prompt = len(encode(text))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = self.max_model_len - n_prompt
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise _bad_request("'max_tokens' must be a non-negative integer", "max_tokens")
        self._check_length(n_prompt, max_tokens)
        gen_text, _, n_generated, finish, stop_reason = _apply_limits(
            self.generation(text), _parse_stop(body.get("stop")), max_tokens, False
        )
        message: dict[str, Any] = {"role": "assistant", "content": gen_text}
        if self.reasoning == "field":
            # vLLM's reasoning parser: the thinking in `reasoning`, the rest (if any) in content.
            inner = gen_text.removeprefix(THINK_START)
            thinking, end, rest = inner.partition(THINK_END)
            message = {"role": "assistant", "content": rest if end else None, "reasoning": thinking}
        with self._lock:
            self._prompts += 1
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                }
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "total_tokens": n_prompt + n_generated,
                "completion_tokens": n_generated,
            },
        }


def _ends_with_choice(text: str, choice: str) -> bool:
    """Whether ``text`` ends with the choice continuation ``choice`` (" Paris"). Under a chat
    template lm-eval drops the delimiter (the choice follows the template's assistant header),
    so the choice without its leading space also counts, after any whitespace."""
    if text.endswith(choice):
        return True
    bare = choice.lstrip()
    return bare != choice and text.endswith(bare) and text[: -len(bare)][-1:].isspace()


def _is_id_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _check_vocab(ids: list[int]) -> None:
    if ids and (min(ids) < 0 or max(ids) >= VOCAB_SIZE):
        bad = next(t for t in ids if t < 0 or t >= VOCAB_SIZE)
        raise _bad_request(f"Token id {bad} is out of vocabulary", "prompt")


def _parse_prompts(
    prompt: object, *, add_special_tokens: bool
) -> list[tuple[list[int], str | None]]:
    """Normalize the four prompt forms to (ids, original text or None). Strings get BOS, like vLLM."""
    if isinstance(prompt, str):
        prompts: list[tuple[list[int], str | None]] = [(encode(prompt, add_special_tokens), prompt)]
    elif isinstance(prompt, list) and prompt and _is_id_list(prompt):
        prompts = [(prompt, None)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [(encode(p, add_special_tokens), p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id_list(p) for p in prompt):
        prompts = [(p, None) for p in prompt]
    else:
        raise _bad_request(
            "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            "prompt",
        )
    for ids, _ in prompts:
        if not ids:
            raise _bad_request("Prompt cannot be empty", "prompt")
        _check_vocab(ids)
    return prompts


def _parse_stop(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise _bad_request("'stop' must be a string or a list of strings", "stop")


def _apply_limits(
    full: str, stops: list[str], max_tokens: int, include_stop: bool
) -> tuple[str, list[int], int, str, str | None]:
    """Cut a generation like vLLM: the earliest stop string wins if it is complete within max_tokens.

    Returns (text, ids of text, tokens generated, finish_reason, stop_reason).
    """
    hit_pos, hit = -1, None
    for s in stops:
        pos = full.find(s)
        if pos != -1 and (hit is None or pos < hit_pos):
            hit_pos, hit = pos, s
    if hit is not None:
        through_stop = encode(full[: hit_pos + len(hit)])
        if len(through_stop) <= max_tokens:
            text = full[: hit_pos + len(hit)] if include_stop else full[:hit_pos]
            return text, encode(text), len(through_stop), "stop", hit
    ids = encode(full)
    if len(ids) < max_tokens:  # room left for EOS: a natural end
        return full, ids, len(ids), "stop", None
    ids = ids[:max_tokens]
    return decode(ids), ids, len(ids), "length", None


# --- HTTP layer ------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: lm-eval's remote tokenizer uses a requests.Session
    server_version = "evalchemy-test"
    sys_version = ""
    # Buffered writes: headers and body leave in one flush; no Nagle delay on the small responses.
    wbufsize = -1
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        app = self.server.app
        with app._lock:
            app._connections.add(self.connection)

    def finish(self) -> None:
        app = self.server.app
        with app._lock:
            app._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.verbose:
            sys.stderr.write(f"[evalchemy-test-server] {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(
        self, status: int, payload: object, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"), headers)

    def _drop_connection(self) -> None:
        """Close without answering; SO_LINGER 0 makes it a TCP reset rather than a clean EOF."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The socket only really closes once the file objects made from it are closed too.
        for f in (self.wfile, self.rfile):
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(OSError):
            self.connection.close()
        # handle_one_request() flushes wfile after us: give it somewhere harmless to write.
        self.wfile = io.BytesIO()

    @staticmethod
    def _json_body(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad_request(f"Invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise _bad_request("The JSON body must be an object")
        return body

    # -- routing -----------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        # Read the body first, even for errors, so the next request on a keep-alive connection parses cleanly.
        raw = self._read_body() if method == "POST" else b""
        if app._stopping.is_set():
            # A stopping server answers nothing more, not even on a kept-alive connection
            # that stop() has yet to close: its clients see it go at once.
            self._drop_connection()
            return
        if path != "/stats":  # reading stats must not change them
            app._count(path)
            if self._scripted(app._scripted_fault(), app):
                return
        try:
            if app.basic_auth is not None and path not in ("/health", "/stats"):
                expected = "Basic " + base64.b64encode(app.basic_auth.encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self._send_json(401, {"error": "Unauthorized"}, [("WWW-Authenticate", "Basic")])
                    return
            # vLLM's middleware guards every /v1 path, existing or not, and answers this exact body.
            if (
                path.startswith("/v1")
                and app.api_key is not None
                and self.headers.get("Authorization") != f"Bearer {app.api_key}"
            ):
                self._send_json(401, {"error": "Unauthorized"})
                return
            routes = self._routes()
            if path not in routes:
                self._send_json(
                    404, {"detail": "Not Found"}
                )  # FastAPI's answer for an unknown route
                return
            want, handler = routes[path]
            if want != method:
                self._send_json(405, {"detail": "Method Not Allowed"})
                return
            handler(raw)
        except APIError as exc:
            self._send_json(exc.status, exc.payload())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # answer 500 and keep serving, like a real server
            if app.verbose:
                import traceback

                traceback.print_exc()
            with contextlib.suppress(OSError):
                self._send_json(500, APIError(500, f"Internal server error: {exc!r}").payload())

    def _routes(self) -> dict[str, tuple[str, Any]]:
        app = self.server.app
        routes: dict[str, tuple[str, Any]] = {
            "/stats": ("GET", lambda raw: self._send_json(200, app.stats())),
            "/v1/models": ("GET", lambda raw: self._send_json(200, app.models_payload())),
        }
        if not app.no_health:
            routes["/health"] = ("GET", lambda raw: self._send(200, b""))
        if not app.no_tokenizer_endpoints:
            routes["/tokenizer_info"] = (
                "GET",
                lambda raw: self._send_json(200, app.tokenizer_info_payload()),
            )
            routes["/tokenize"] = (
                "POST",
                lambda raw: self._send_json(200, app.tokenize(self._json_body(raw))),
            )
            routes["/detokenize"] = (
                "POST",
                lambda raw: self._send_json(200, app.detokenize(self._json_body(raw))),
            )
        routes["/v1/chat/completions"] = (
            "POST",
            lambda raw: self._completion(raw, app.chat_complete),
        )
        if not app.chat_only:
            routes["/v1/completions"] = ("POST", lambda raw: self._completion(raw, app.complete))
        return routes

    def _scripted(self, fault: str | None, app: EvalchemyTestServer) -> bool:
        """Answer with a ``first_answers`` fault; False when this request has none."""
        if fault is None:
            return False
        if fault == "reset":
            self._drop_connection()
        elif fault == "truncated":
            body = json.dumps(app.models_payload()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            with contextlib.suppress(OSError):
                self.wfile.flush()
            self._drop_connection()
        elif fault == "invalid_json":
            self._send(200, b'{"object":"list","data":[{"id":')
        else:
            status = int(fault)
            headers = (
                [("Retry-After", _fmt_seconds(app.retry_after))]
                if app.retry_after is not None
                else []
            )
            message = f"Simulated failure (HTTP {status}, scripted)"
            self._send_json(status, APIError(status, message).payload(), headers)
        return True

    def _completion(self, raw: bytes, answer: Any) -> None:
        """Run one completion request through the fault switches, the concurrency cap and the
        model, then answer it."""
        app = self.server.app
        seq = app._begin_completion()
        admitted = app._admitted()
        try:
            reply = self._completion_reply(seq, raw, answer) if admitted else self._rejection()
        finally:
            # No longer in flight once its reply is decided, on every path (answer, error,
            # reset, away): end before anything leaves, or the client's next request (on another
            # connection) could start while this one still counts, and a stats read right after
            # the client has its reply could still see it in flight.
            if admitted:
                app._end_admitted()
            app._end_completion()
        if app._stopping.is_set():  # stopped while computing (a latency cut short, a hang)
            self._drop_connection()
            return
        reply()

    def _rejection(self) -> Callable[[], None]:
        message = f"Too many requests: more than {self.server.app.reject_over} in flight"
        return functools.partial(self._send_json, 429, APIError(429, message).payload())

    def _completion_reply(self, seq: int, raw: bytes, answer: Any) -> Callable[[], None]:
        """How request ``seq`` is answered: decided, and the model's answer computed, while the
        request counts as in flight; sent by the caller once it no longer does."""
        app = self.server.app
        fault = app._fault_for(seq)
        if fault == "hang":
            app._stopping.wait()
            return self._drop_connection
        if fault == "reset":
            return self._drop_connection
        if fault == "away":

            def go_away() -> None:
                self._drop_connection()
                app.restart(app.away_for)

            return go_away
        if fault == "fail":
            headers = (
                [("Retry-After", _fmt_seconds(app.retry_after))]
                if app.retry_after is not None
                else []
            )
            message = f"Simulated failure of completion request {seq} (HTTP {app.fail_status})"
            payload = APIError(app.fail_status, message).payload()
            return functools.partial(self._send_json, app.fail_status, payload, headers)
        if fault == "invalid_json":
            truncated = (
                b'{"id":"cmpl-truncated","object":"text_completion","choices":[{"index":0,"te'
            )
            return functools.partial(self._send, 200, truncated)
        with app._slot():
            app._hold(seq)
            payload = answer(self._json_body(raw))
        return functools.partial(self._send_answer, raw, payload)

    def _send_answer(self, raw: bytes, payload: object) -> None:
        """Count the answer, then write it: a client that has its answer finds it counted (a
        large body leaves while it is written, before any flush). A write that fails takes
        the count back."""
        app = self.server.app
        key = app._record_answer(raw)
        try:
            self._send_json(200, payload)
            self.wfile.flush()  # raises when the client or a stopping server cut us off
        except BaseException:
            app._unrecord_answer(key)
            raise


_ANSWER_FAULTS = ("reset", "truncated", "invalid_json")


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --- CLI -------------------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pytest_evalchemy.testing.server",
        description="vLLM-compatible test server whose simulated model answers the offline benchmarks' answer key.",
    )
    p.add_argument(
        "--benchmarks",
        type=Path,
        default=None,
        help="benchmarks folder to load the answer key from (default: the offline benchmarks "
        "the package ships)",
    )
    p.add_argument(
        "--no-answer-key",
        action="store_true",
        help="answer every choice alike: a server that knows no benchmark",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument(
        "--require-basic",
        metavar="USER:PASSWORD",
        help="require this HTTP basic auth on every path but /health and /stats",
    )
    p.add_argument("--port-file", type=Path, help="also write the base URL to this file when ready")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    g = p.add_argument_group("fault injection and performance")
    g.add_argument(
        "--latency", type=float, default=0.0, help="seconds slept per completion request"
    )
    g.add_argument(
        "--max-concurrency", type=int, help="completion requests served at once; the rest wait"
    )
    g.add_argument("--fail-first", type=int, default=0, help="fail the first N completion requests")
    g.add_argument("--fail-status", type=int, default=503, help="HTTP status of those failures")
    g.add_argument(
        "--fail-after",
        type=int,
        help="every completion request after the first N fails (with --fail-status)",
    )
    g.add_argument(
        "--retry-after", type=float, help="Retry-After header (seconds) on those failures"
    )
    g.add_argument("--null-logprobs", action="store_true", help="echo logprobs come back all null")
    g.add_argument(
        "--echo-off-by-one", action="store_true", help="echo logprobs miss the prompt's first token"
    )
    g.add_argument(
        "--no-bos", action="store_true", help="a tokenizer that adds no BOS (GPT-2-, Qwen-style)"
    )
    g.add_argument(
        "--bos-trained",
        action="store_true",
        help="a model trained with the BOS: prompts without exactly one score inverted",
    )
    g.add_argument(
        "--no-tokenizer-endpoints", action="store_true", help="404 on /tokenizer_info etc."
    )
    g.add_argument(
        "--no-health", action="store_true", help="404 on /health (a server that is not vLLM)"
    )
    g.add_argument(
        "--chat-only", action="store_true", help="serve /v1/chat/completions, 404 /v1/completions"
    )
    g.add_argument("--no-chat-template", action="store_true", help="no chat template")
    g.add_argument(
        "--reasoning",
        choices=REASONING_MODES,
        help="think before answering: in the content (<think>...</think>) or in a reasoning field",
    )
    g.add_argument(
        "--hang-after", type=int, help="completion requests after the first N hang until shutdown"
    )
    g.add_argument(
        "--reset-first", type=int, default=0, help="reset the connection of the first N requests"
    )
    g.add_argument(
        "--invalid-json-first", type=int, default=0, help="truncated JSON for the first N requests"
    )
    g.add_argument(
        "--first-answers",
        default="",
        help="faults for the first answers of any kind, in order, comma-separated: an HTTP "
        "status (500, 503, 429), reset, truncated, invalid_json",
    )
    g.add_argument(
        "--start-after",
        type=float,
        default=0.0,
        help="hold the port but refuse connections for this many seconds (a server loading)",
    )
    g.add_argument(
        "--away-after", type=int, help="after N completion requests, go away (see --away-for)"
    )
    g.add_argument("--away-for", type=float, default=0.0, help="seconds away before serving again")
    g.add_argument(
        "--flip",
        action="append",
        default=[],
        metavar="TASK:DOC_ID[,...]",
        help="invert the answer of these documents (a second model that differs on them)",
    )
    g.add_argument(
        "--weights",
        default="",
        metavar="LABEL",
        help="simulate other weights under the same model name: text with no answer-key marker "
        "(the endpoint check's canary) scores a little differently, every score stays the same",
    )
    g.add_argument(
        "--reject-over",
        type=int,
        help="answer 429 to a completion request arriving while more than N are in flight",
    )
    args = p.parse_args(argv)
    try:
        parse_flips(args.flip)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; announce the URL on stdout (and in --port-file)."""
    args = _parse_args(argv)
    entries: list[AnswerEntry] = []
    if not args.no_answer_key:
        # Imported here: only the CLI reads the benchmarks folder.
        from pytest_evalchemy.core.resources import benchmarks_dir
        from pytest_evalchemy.testing.answer_key import load_answer_key

        entries = load_answer_key(args.benchmarks or benchmarks_dir())
    server = EvalchemyTestServer(
        entries,
        host=args.host,
        port=args.port,
        model=args.model,
        max_model_len=args.max_model_len,
        api_key=args.api_key,
        latency=args.latency,
        max_concurrency=args.max_concurrency,
        fail_first=args.fail_first,
        fail_status=args.fail_status,
        fail_after=args.fail_after,
        basic_auth=args.require_basic,
        retry_after=args.retry_after,
        null_logprobs=args.null_logprobs,
        no_tokenizer_endpoints=args.no_tokenizer_endpoints,
        no_health=args.no_health,
        chat_only=args.chat_only,
        chat_template=None if args.no_chat_template else CHAT_TEMPLATE,
        reasoning=args.reasoning,
        hang_after=args.hang_after,
        reset_first=args.reset_first,
        invalid_json_first=args.invalid_json_first,
        reject_over=args.reject_over,
        verbose=args.verbose,
        first_answers=[k for k in args.first_answers.split(",") if k],
        away_after=args.away_after,
        away_for=args.away_for,
        flip=args.flip,
        adds_bos=not args.no_bos,
        bos_trained=args.bos_trained,
        echo_off_by_one=args.echo_off_by_one,
        weights=args.weights,
    )
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start(delay=args.start_after)
    try:
        if args.port_file is not None:
            # Write then rename, so a reader polling the file never sees it half written.
            tmp = args.port_file.with_name(args.port_file.name + f".{os.getpid()}.tmp")
            tmp.write_text(server.url + "\n", encoding="utf-8")
            os.replace(tmp, args.port_file)
        print(f"{READY_PREFIX} {server.url}", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
