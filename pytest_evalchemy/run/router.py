"""vLLM's own router (``vllm-router``) in front of several replicas of one model.

With several endpoints of one model, every request of every item goes through one router, so
one item uses all the replicas and a replica that dies mid-item costs nothing: the router sends
its requests to the others (it retries, health-checks and has a circuit breaker). The router is
a Rust binary in the ``vllm-router`` wheel (``pip install 'pytest-evalchemy[router]'``); it
runs on a free loopback port for the session, in its own process group, and is stopped like the
vLLM servers of ``serve.py``.

Also the replica check: the replicas must be interchangeable (same model, same context length,
same tokenizer), or a score would depend on which replica answered which request; and the
health check: the router uses only the replicas that answer ``/health`` and does not start
without one, so a server that has none (one that is not vLLM) is named before the router is
started, not after its timeout or by a replica quietly left out.

Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import requests

from ..core.endpoint import HEALTH_PATH, Endpoint
from ..core.errors import EndpointError
from ..core.redact import redact_url
from .endpoint import CHECK_PATIENCE_S, EndpointInfo, split_credentials
from .patience import TRANSIENT_STATUSES, Outage, OutageGaveUp, connection_reason
from .serve import ListeningProcess, ServeError, free_port, log_tail, stop_process_group

# The logger keeps its name of the flat layout: users filter log lines by it.
log = logging.getLogger("pytest_evalchemy.router")

BINARY = "vllm-router"
INSTALL_HINT = "pip install 'pytest-evalchemy[router]'"
POLICY = "round_robin"  # equal replicas; power_of_two would need 2+ healthy workers at all times
# The router's runtime health check (default every 60 s) takes a dead replica out of the
# rotation; until then its retries send that replica's requests to the others.
HEALTH_CHECK_S = 5
TOKENIZER_PROBE = "The quick brown fox, 1234 — ünïcödé."
# How long the router gives a worker's HEALTH_PATH an answer before it serves (its
# --health-check-timeout-secs default). It sends no API key there (it gets none), and neither
# does the check.
HEALTH_TIMEOUT_S = 5.0


def find_binary() -> str | None:
    """The ``vllm-router`` of this environment (beside its python), else one on PATH."""
    here = Path(sys.executable).parent / BINARY
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(BINARY)


def command_line(
    binary: str, workers: Sequence[str], port: int, metrics_port: int, host: str = "127.0.0.1"
) -> list[str]:
    """The router's command: ``workers`` are the replicas' server roots (``http://host:port``).
    Its Prometheus exporter gets a free port of its own: it binds 29000 unless told, so a
    second router on the machine (another run, an xdist worker's test) would not start."""
    return [
        binary,
        "--host",
        host,
        "--port",
        str(port),
        "--prometheus-host",
        host,
        "--prometheus-port",
        str(metrics_port),
        "--worker-urls",
        *workers,
        "--policy",
        POLICY,
        "--health-check-interval-secs",
        str(HEALTH_CHECK_S),
        "--log-level",
        "warning",
    ]


class Router(ListeningProcess):
    """One ``vllm-router`` process: ``start()``, ``wait_ready()``, ``stop()``."""

    what = "router"

    def __init__(
        self, workers: Sequence[Endpoint], log_path: Path, binary: str | None = None
    ) -> None:
        self.workers = [w.root for w in workers]
        self.log_path = log_path
        self.binary = binary or find_binary()
        self.host = "127.0.0.1"
        self.port = None
        self.command: list[str] = []
        self._proc = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self.binary is None:
            raise ServeError(f"{BINARY} is not installed ({INSTALL_HINT})")
        self.port = free_port(self.host)
        self.command = command_line(
            self.binary, self.workers, self.port, free_port(self.host), self.host
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the router's life
        self._log.write(f"$ {shlex.join(self.command)}\n".encode())
        self._log.flush()
        # Its own session, as serve.py does for vLLM: stop() signals the whole group, and a
        # Ctrl-C in the terminal reaches the run first, which then stops the router in order.
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        log.info("started %s (pid %s): %s", BINARY, self._proc.pid, shlex.join(self.command))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the router answers ``GET /v1/models`` (it first waits for its workers)."""
        if self._proc is None:
            raise ServeError("router not started")
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServeError(self._failure(f"{BINARY} exited with code {code}"))
            try:
                with urllib.request.urlopen(self.endpoint.models_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                message = self._failure(f"{BINARY} not ready after {timeout:g} s")
                self.stop()
                raise ServeError(message)
            time.sleep(0.1)

    def _failure(self, what: str) -> str:
        if self._log is not None:
            self._log.flush()
        tail = log_tail(self.log_path)
        return "\n".join(
            [what, f"command: {shlex.join(self.command)}", *(f"  | {line}" for line in tail)]
        )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM its process group, SIGKILL after ``grace`` s. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            stop_process_group(proc, grace, BINARY)
        finally:
            if self._log is not None:
                self._log.close()
            atexit.unregister(self.stop)


def _tokenizer_fingerprint(endpoint: Endpoint, timeout: float = 30.0) -> Any:
    """What a replica's tokenizer makes of a probe string (None without /tokenize)."""
    try:
        resp = requests.post(
            # Without the URL's credentials: the one Authorization header carries them.
            split_credentials(endpoint.tokenize_url)[0],
            json={"prompt": TOKENIZER_PROBE, "add_special_tokens": False},
            headers=endpoint.headers,
            timeout=timeout,
            verify=endpoint.verify,
        )
        return resp.json().get("tokens") if resp.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def _health(endpoint: Endpoint, outage: Outage) -> tuple[bool, str]:
    """Whether ``endpoint``'s server answers ``GET /health`` as the router needs (2xx), and what it answered
    ("HTTP 404", "connection refused"); a server that is away or busy is asked again while
    ``outage`` lasts, as the endpoint check's other requests are."""

    def attempt() -> int:
        resp = requests.get(endpoint.health_url, timeout=HEALTH_TIMEOUT_S, verify=endpoint.verify)
        if resp.status_code in TRANSIENT_STATUSES:
            resp.raise_for_status()
        return resp.status_code

    try:
        status = outage.call(attempt)
    except (OutageGaveUp, requests.RequestException) as exc:
        cause = exc.__cause__ if isinstance(exc, OutageGaveUp) else exc
        if isinstance(cause, requests.HTTPError) and cause.response is not None:
            return False, f"HTTP {cause.response.status_code}"
        if isinstance(cause, requests.exceptions.SSLError):
            return False, "a TLS error"
        if isinstance(cause, requests.Timeout):
            return False, f"nothing within {HEALTH_TIMEOUT_S:g} s"
        if isinstance(cause, requests.ConnectionError):
            return False, connection_reason(cause)
        return False, type(cause).__name__
    return 200 <= status < 300, f"HTTP {status}"


def check_health(endpoints: Sequence[Endpoint], wait_s: float | None = None) -> None:
    """Raise ``EndpointError`` unless every endpoint answers ``/health`` as the router needs.
    Without any healthy worker it waits until its timeout and does not start; a worker without
    ``/health`` it takes out of the rotation after its first health checks (seen within 10 s),
    so the run would quietly use fewer endpoints than given. The error names each endpoint
    and what it answered. ``wait_s`` is the endpoint check's patience."""
    answers = []
    for endpoint in endpoints:
        outage = Outage(CHECK_PATIENCE_S if wait_s is None else wait_s)
        answers.append((redact_url(endpoint.health_url), *_health(endpoint, outage)))
    if all(ok for _, ok, _ in answers):
        return
    said = ", ".join(f"{url} answered {what}" for url, _, what in answers)
    raise EndpointError(
        f"{BINARY} would stand in front of the {len(answers)} endpoints and uses only those "
        f"that answer GET {HEALTH_PATH} with 200 (without one it does not start): {said}. "
        f"Serve every endpoint with vLLM (its "
        f"server has {HEALTH_PATH}), or give one endpoint, or put your own load balancer in "
        "front of them and give its URL as the one --evalchemy-endpoint"
    )


def check_replicas(infos: Sequence[EndpointInfo], endpoints: Sequence[Endpoint]) -> None:
    """Raise ``EndpointError`` unless the replicas serve the same model with the same context
    length and tokenizer: behind one router any replica may answer any request.
    ``endpoints``: the replicas checked into ``infos``, in the same order."""
    if len(infos) < 2:
        return
    first = infos[0]

    def show(attr: str) -> str:
        return ", ".join(f"{redact_url(i.url)}: {getattr(i, attr)!r}" for i in infos)

    if len({i.model for i in infos}) > 1:
        raise EndpointError(
            f"the replicas serve different models ({show('model')}); a router would mix them "
            "within one item. Pass --evalchemy-model to pick one they all serve"
        )
    if len({i.max_model_len for i in infos}) > 1:
        raise EndpointError(
            f"the replicas serve {first.model!r} with different context lengths "
            f"({show('max_model_len')}); start them with the same --max-model-len"
        )
    if first.remote_tokenizer:
        prints = [_tokenizer_fingerprint(e) for e in endpoints]
        if any(p != prints[0] for p in prints[1:]):
            urls = ", ".join(redact_url(i.url) for i in infos)
            raise EndpointError(
                f"the replicas' tokenizers disagree ({urls} tokenize the same text differently); "
                "serve the same model files (and --tokenizer) on every replica"
            )


def split_devices(gpu: str | None, replicas: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each replica: replica i gets the i-th of ``gpu``'s devices (one
    replica keeps them all, as before); raises ValueError when there are too few."""
    if replicas <= 1:
        return [gpu]
    if gpu is None:
        return [None] * replicas
    devices = [d.strip() for d in gpu.split(",") if d.strip()]
    if len(devices) < replicas:
        raise ValueError(f"{len(devices)} device(s) in {gpu!r} for {replicas} replicas")
    return devices[:replicas]
