"""What the plugin's test modules share besides fixtures: paths, configs, runs of pytest with
the plugin (in process and as a child process), reading a run's summary, and the asserts
several modules make. Fixtures live in ``conftest.py``; a test module imports from here,
never from another test module."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_evalchemy.core.resources import summary_schema_path
from pytest_evalchemy.testing.answer_key import AnswerEntry, expected_accuracy
from pytest_evalchemy.testing.processes import spawn
from pytest_evalchemy.testing.server import EvalchemyTestServer

REPO = Path(__file__).resolve().parents[1]
OFFLINE_CONFIG = REPO / "configs" / "offline_config.json"

# The completion requests of one endpoint check: its one-token probe and its canary.
CHECK_COMPLETIONS = 2

# ---------------------------------------------------------------- configs


def offline_task(name: str, **settings: Any) -> dict[str, Any]:
    """A task entry for one offline benchmark."""
    return {"tasks": [name], "num_fewshot": 1, "limit": 8, "batch_size": 4, **settings}


# Two small items on the offline benchmarks, mini_arc first (high priority).
ARC2 = {"mini_arc": offline_task("mini_arc", limit=4, priority="high")}
TWO = {**ARC2, "mini_mmlu": offline_task("mini_mmlu", limit=4)}
# mini_arc with one prompt per request: 4 documents x 4 choices = 16 requests.
SLOW_ARC = {"mini_arc": offline_task("mini_arc", limit=4, batch_size=1, num_fewshot=0)}
# The vllm-marked tests' items. Small limits: a random tiny model on two CPU cores; the path
# matters, not the scores.
VLLM_TASKS = {
    "mini_arc": {"tasks": ["mini_arc"], "num_fewshot": 1, "limit": 6, "batch_size": 2},
    "mini_hellaswag": {"tasks": ["mini_hellaswag"], "num_fewshot": 1, "limit": 6, "batch_size": 2},
    "mini_mmlu": {"tasks": ["mini_mmlu"], "num_fewshot": 1, "limit": 6, "batch_size": 2},
    # A random model talks until max_gen_toks: its answers are taken as they are here.
    "mini_gsm8k": {
        "tasks": ["mini_gsm8k"],
        "num_fewshot": 1,
        "limit": 2,
        "log_samples": True,
        "max_invalid_share": 1,
    },
}


def write_config(path: Path, data: dict[str, Any] | str) -> Path:
    """``data`` written to ``path`` as JSON (a string as it is)."""
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    return path


def config_option(root: Path, tasks: dict[str, Any], **extra: Any) -> str:
    """The ``--evalchemy-config`` option of a config of ``tasks`` (and ``extra`` top-level
    keys) written to ``root/eval.json``."""
    return f"--evalchemy-config={write_config(root / 'eval.json', {'tasks': tasks, **extra})}"


# ---------------------------------------------------------------- runs


def run_evalchemy(
    pytester: pytest.Pytester, url: str, *args: str, plugins: tuple[object, ...] = ()
) -> pytest.RunResult:
    """pytest with the plugin, in process, against the endpoint ``url``; no cache folder."""
    return pytester.runpytest(
        f"--evalchemy-endpoint={url}", "-p", "no:cacheprovider", *args, plugins=list(plugins)
    )


def _pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def start_pytest(root: Path, *args: str) -> subprocess.Popen[str]:
    """pytest started as a child process (its own process group) in ``root``; its output
    (stdout and stderr together) on ``proc.stdout``."""
    return spawn(_pytest_command(*args), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_pytest(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """pytest run to its end as a child process in ``root``, its output captured."""
    return subprocess.run(
        _pytest_command(*args), cwd=root, capture_output=True, text=True, timeout=timeout
    )


def validate_config(
    config: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest_evalchemy --validate-config`` on ``config``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_evalchemy", "--validate-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def wait_for(
    condition: Callable[[], bool],
    proc: subprocess.Popen[str],
    failure: str = "the run did not get there in time",
) -> None:
    """Wait until ``condition()`` holds while ``proc`` runs. Fails with the run's output when
    it ended first; the deadline is only a failsafe, which fails saying ``failure``."""
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, failure
        time.sleep(0.02)


def wait_for_requests(
    server: EvalchemyTestServer, n: int, proc: subprocess.Popen[str], key: str = "completions"
) -> None:
    """Wait until ``server`` has counted ``n`` (completion requests, or the faults ``key``
    names) while ``proc`` runs."""

    def count() -> int:
        stats = server.stats()
        return stats[key] if key in stats else stats["faults"][key]

    wait_for(lambda: count() >= n, proc, f"the run never got to {n} {key}")


class ArmFaults:
    """A plugin that sets the server's fault switches once the endpoint check is done, so the
    faults hit the items' requests and not the check's probe; ``per_item`` switches are set
    when the item of that name starts."""

    def __init__(
        self,
        srv: EvalchemyTestServer,
        switches: dict[str, Any] | None = None,
        per_item: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.srv = srv
        self.switches = switches or {}
        self.per_item = per_item or {}

    def _set(self, switches: dict[str, Any]) -> None:
        self.srv.reset_stats()  # the *_first faults count from here
        for name, value in switches.items():
            setattr(self.srv, name, value)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._set(self.switches)

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.name in self.per_item:
            self._set(self.per_item[item.name])


def vllm_pids_on_port(port: str) -> list[int]:
    """The processes of vLLM OpenAI servers whose command line names ``port``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in cmdline and port.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


# ---------------------------------------------------------------- what a run leaves


def read_summary(root: Path) -> dict[str, Any]:
    """The summary of the only run under ``root``."""
    (summary,) = root.glob("*/evalchemy_summary_*.json")
    return json.loads(summary.read_text(encoding="utf-8"))


def read_run_summary(results: Path, run_id: str) -> dict[str, Any]:
    """The summary of the run ``run_id`` in the results folder ``results``."""
    path = results / run_id / f"evalchemy_summary_{run_id}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def write_run_summary(results: Path, run_id: str, **summary: Any) -> Path:
    """A summary of the run ``run_id`` (``summary`` its keys besides ``run_id``) written where a
    run writes it in the results folder ``results``; the run's folder."""
    folder = results / run_id
    folder.mkdir(parents=True)
    path = folder / f"evalchemy_summary_{run_id}.json"
    path.write_text(json.dumps({"run_id": run_id, **summary}), encoding="utf-8")
    return folder


def run_metrics(results: Path, run_id: str) -> dict[str, Any]:
    """Each item's metrics in the summary of the run ``run_id``."""
    return {k: v["metrics"] for k, v in read_run_summary(results, run_id)["tasks"].items()}


def statuses_so_far(results: Path, run_id: str) -> dict[str, str]:
    """Each item's status in the summary of a run still going; empty while there is none."""
    try:
        return {k: v["status"] for k, v in read_run_summary(results, run_id)["tasks"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def check_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` after checking it against the shipped ``configs/summary.schema.json``."""
    schema = json.loads(summary_schema_path().read_text(encoding="utf-8"))
    jsonschema.validate(summary, schema, cls=jsonschema.Draft202012Validator)
    return summary


# ---------------------------------------------------------------- expectations


def expected(answer_key: list[AnswerEntry], task: str, limit: int | None) -> float:
    """The accuracy the test server's simulated model must get on the first ``limit`` docs."""
    return expected_accuracy(answer_key, task, limit)


def sem(p: float, n: int) -> float:
    """lm-eval's stderr of a mean of 0/1 scores: the sample standard deviation over sqrt(n)."""
    return math.sqrt(p * (1 - p) / (n - 1))


def assert_no_traceback(result: pytest.RunResult) -> None:
    """The run printed no Python traceback and no pytest internal error."""
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    assert "INTERNALERROR" not in text


def files_text(root: Path) -> Iterator[tuple[Path, str]]:
    """Every file under ``root`` with its text, binary files (the request cache) too."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes().decode("utf-8", errors="replace")


def assert_nowhere(secrets: Iterable[str], root: Path, **outputs: str) -> None:
    """None of ``secrets`` in the named ``outputs`` (a run's stdout, stderr) nor in any file
    under ``root``."""
    secrets = list(secrets)
    for name, text in [*outputs.items(), *((str(p), t) for p, t in files_text(root))]:
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {name}"
