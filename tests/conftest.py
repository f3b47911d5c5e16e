"""Fixtures of the plugin's tests: the answer key, test servers, lm-eval loaded once, and the
vLLM environment. Plain functions and constants the test modules share are in ``helpers.py``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.serve import ServeSpec, VllmServer
from pytest_evalchemy.testing import server as server_module
from pytest_evalchemy.testing.answer_key import AnswerEntry, load_answer_key
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import REPO


@pytest.fixture(scope="session")
def answer_key() -> list[AnswerEntry]:
    return load_answer_key(REPO / "benchmarks")


@pytest.fixture(scope="session")
def server(answer_key: list[AnswerEntry]) -> Iterator[EvalchemyTestServer]:
    """A well-behaved test server shared by the session."""
    with EvalchemyTestServer(answer_key) as srv:
        yield srv


@pytest.fixture
def auth_headers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """(path, Authorization header) of every request the test servers of this test get."""
    seen: list[tuple[str, str | None]] = []
    dispatch = server_module._Handler._dispatch

    def recording(self: Any, method: str) -> None:
        seen.append((self.path, self.headers.get("Authorization")))
        dispatch(self, method)

    monkeypatch.setattr(server_module._Handler, "_dispatch", recording)
    return seen


@pytest.fixture
def make_server(answer_key: list[AnswerEntry]) -> Iterator[Callable[..., EvalchemyTestServer]]:
    """Start a test server with fault switches; stopped at the end of the test."""
    started: list[EvalchemyTestServer] = []

    def make(**switches: Any) -> EvalchemyTestServer:
        srv = EvalchemyTestServer(answer_key, **switches).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session", autouse=True)
def _lm_eval_warm(answer_key: list[AnswerEntry], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run lm-eval once in this process before any in-process pytester run.

    pytester restores ``sys.modules`` after each in-process run, so a module first imported
    inside one would be imported again in the next, and C extensions (numpy, pyarrow) refuse
    a second load. Importing everything lm-eval needs up front keeps them loaded.
    """
    import lm_eval
    import scipy.stats  # noqa: F401  (the gate's statistics: C extensions, loaded once)
    from lm_eval.tasks import TaskManager

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("warm"))
    try:
        # Its own server: test modules may override the ``server`` fixture with a narrower scope.
        with EvalchemyTestServer(answer_key) as server:
            lm_eval.simple_evaluate(
                model="local-completions",
                model_args={
                    "model": server.model,
                    "base_url": server.completions_url,
                    "tokenizer_backend": "remote",
                },
                tasks=["mini_arc", "mini_gsm8k"],
                limit=1,
                task_manager=TaskManager(
                    include_path=str(REPO / "benchmarks"), include_defaults=False
                ),
            )
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The python of the vLLM environment (``make test`` builds ``.venv-vllm``). Missing, the
    vllm tests fail with the reason rather than skip: CI must not pass them silently."""
    path = Path(os.environ.get("EVALCHEMY_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")
    if not path.exists():
        pytest.fail(
            f"vLLM python not found at {path}: run `make test` (it builds .venv-vllm) or set EVALCHEMY_VLLM_PYTHON",
            pytrace=False,
        )
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(vllm_python: str) -> Path:
    """The tiny random Llama: the one ``make`` built, else built now with the vLLM python."""
    if os.environ.get("EVALCHEMY_TINY_MODEL"):
        return Path(os.environ["EVALCHEMY_TINY_MODEL"])
    out = REPO / ".cache" / "tiny-llama"
    builder = REPO / "pytest_evalchemy" / "testing" / "tiny_model.py"
    done = subprocess.run(
        [vllm_python, str(builder), str(out)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"tiny model build failed:\n{done.stderr[-3000:]}", pytrace=False)
    return out


@pytest.fixture(scope="module")
def vllm_server(
    vllm_python: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """One real vLLM server (CPU build, tiny model) per test module that asks for it."""
    spec = ServeSpec(
        model=str(tiny_model),
        python=vllm_python,
        log_path=tmp_path_factory.mktemp("vllm") / "server.log",
        cache_dir=REPO / ".cache",
        startup_timeout=600,
    )
    with VllmServer(spec) as server:  # started and ready, stopped however the module ends
        yield server
