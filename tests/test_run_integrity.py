"""One run id, one run; a resume completes the same run; what -k and -m deselect; what an
early-ended run leaves to do; a timed-out item's report; Ctrl-C after the summary."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_evalchemy.run.runlock import LOCK_NAME, RunLock
from pytest_evalchemy.testing.processes import spawn
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    CHECK_COMPLETIONS,
    check_summary,
    config_option,
    offline_task,
    read_run_summary,
    start_pytest,
    statuses_so_far,
    wait_for,
)

MakeServer = Callable[..., EvalchemyTestServer]


@contextlib.contextmanager
def _stopped_at_end(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing left behind, whatever happened
        proc.communicate()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


MMLU = {"mini_mmlu": offline_task("mini_mmlu", limit=2)}


# ---------------------------------------------------------------- one run id, one run


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_run_id_in_use_is_refused_and_nothing_is_written(
    pytester: pytest.Pytester, make_server: MakeServer, xdist: list[str]
) -> None:
    srv = make_server()
    run_folder = pytester.path / "results" / "busy"
    holder = RunLock(run_folder, "busy")
    holder.acquire()  # another run holds the folder (this process, for the test)
    try:
        before = _files(run_folder)
        result = pytester.runpytest_subprocess(
            f"--evalchemy-endpoint={srv.completions_url}",
            config_option(pytester.path, MMLU),
            "--evalchemy-run-id=busy",
            *xdist,
        )
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            [
                f"ERROR: evalchemy: run id 'busy' is in use by another run (pid {os.getpid()} on "
                "host * since *): wait for it to end, or pass another --evalchemy-run-id (lock: *)"
            ]
        )
        assert _files(run_folder) == before  # the lock file only, as the holder wrote it
        assert srv.stats()["requests"] == {}  # refused before the endpoint check
    finally:
        holder.release()
    # Once the holder is gone, the same id runs.
    pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={srv.completions_url}",
        config_option(pytester.path, MMLU),
        "--evalchemy-run-id=busy",
        *xdist,
    ).assert_outcomes(passed=1)


def test_two_runs_with_one_id_the_second_refused_the_first_complete(
    tmp_path: Path, make_server: MakeServer
) -> None:
    # The first run's requests after the probe and one answer wait until release(): it is
    # mid-item for as long as the second run takes to start, however slow that is.
    srv = make_server(hold_after=2)
    tasks = {"mini_arc": offline_task("mini_arc", limit=8, batch_size=1, num_fewshot=0)}
    cfg = config_option(tmp_path, tasks)
    first = start_pytest(
        tmp_path, f"--evalchemy-endpoint={srv.url}", cfg, "--evalchemy-run-id=same"
    )
    with _stopped_at_end(first):
        wait_for(
            lambda: (
                srv.stats()["faults"]["held"] >= 1
                and statuses_so_far(tmp_path / "results", "same").get("mini_arc/mini_arc")
                == "running"
            ),
            first,
        )
        second = start_pytest(
            tmp_path, f"--evalchemy-endpoint={srv.url}", cfg, "--evalchemy-run-id=same"
        )
        with _stopped_at_end(second):
            out, _ = second.communicate(timeout=120)
        assert second.returncode == pytest.ExitCode.USAGE_ERROR, out
        assert f"run id 'same' is in use by another run (pid {first.pid} on host" in out
        srv.release()
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 0, out
    summary = read_run_summary(tmp_path / "results", "same")
    assert summary["tasks"]["mini_arc/mini_arc"]["status"] == "passed"
    log = (tmp_path / "results" / "same" / "evalchemy_same.log").read_text()
    assert log.count("started:") == 1  # one run's log, not two interleaved


def test_the_lock_of_a_killed_run_is_no_obstacle(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    folder = pytester.path / "results" / "dead"
    holder = spawn(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pytest_evalchemy.run.runlock import RunLock\n"
            f"RunLock({str(folder)!r}, 'dead').acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
    )
    with _stopped_at_end(holder):
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert str(holder.pid) in (folder / LOCK_NAME).read_text()  # the dead run's lock is left
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, MMLU),
        "--evalchemy-run-id=dead",
    )
    result.assert_outcomes(passed=1)


def test_a_run_folder_that_cannot_be_locked_is_a_usage_error(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    (pytester.path / "results").mkdir()
    (pytester.path / "results" / "taken").write_text("a file where the run folder would be")
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, MMLU),
        "--evalchemy-run-id=taken",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: evalchemy: cannot lock the run folder '*taken' (File exists); pass --evalchemy-output*"
        ]
    )


def test_collect_only_creates_no_run_folder(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, MMLU),
        "--evalchemy-run-id=look",
        "--collect-only",
    )
    assert result.ret == 0
    assert not (pytester.path / "results").exists()


# ---------------------------------------------------------------- a resume completes the same run


def _finished_run(
    pytester: pytest.Pytester, srv: EvalchemyTestServer, cfg: str, *args: str
) -> bytes:
    pytester.runpytest(
        f"--evalchemy-endpoint={srv.completions_url}", cfg, "--evalchemy-run-id=r", *args
    ).assert_outcomes(passed=1)
    return (pytester.path / "results" / "r" / "evalchemy_summary_r.json").read_bytes()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"config": {"mini_mmlu": offline_task("mini_mmlu", limit=3)}},
            "*not the same run (config sha256 * in the run, * now)*",
        ),
        (
            {"args": ["--evalchemy-limit=1"]},
            "*not the same run (--evalchemy-limit None in the run, 1 now)*",
        ),
        (
            {"model": "another-model"},
            "*not the same run (served model 'evalchemy-test-model' in the run, 'another-model' now)*",
        ),
        (
            {"max_model_len": 4096},
            "*not the same run (max length 16384 in the run, 4096 now; max_model_len 16384 in the "
            "run, 4096 now)*",
        ),
        (
            # Every difference known before a request, in one line.
            {
                "config": {"mini_mmlu": offline_task("mini_mmlu", limit=3)},
                "args": ["--evalchemy-limit=1"],
            },
            "*not the same run (config sha256 * in the run, * now; --evalchemy-limit None in the "
            "run, 1 now)*",
        ),
    ],
    ids=["config", "limit", "model", "max-model-len", "config-and-limit"],
)
def test_resume_of_another_run_is_refused(
    pytester: pytest.Pytester, make_server: MakeServer, change: dict, message: str
) -> None:
    srv = make_server()
    first = _finished_run(pytester, srv, config_option(pytester.path, MMLU))
    other = make_server(
        model=change.get("model", srv.model), max_model_len=change.get("max_model_len", 16384)
    )
    cfg = config_option(pytester.path, change.get("config", MMLU))
    result = pytester.runpytest(
        f"--evalchemy-endpoint={other.completions_url}",
        cfg,
        "--evalchemy-resume=r",
        *change.get("args", []),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if "--evalchemy-resume r" in line]
    assert len(lines) == 1, result.stderr.lines  # one line names every difference
    result.stderr.fnmatch_lines(
        [message + "--evalchemy-resume-force to mix them (the summary records it)"]
    )
    assert (pytester.path / "results" / "r" / "evalchemy_summary_r.json").read_bytes() == first
    if "config" in change or "args" in change:
        assert other.stats()["requests"] == {}  # decided before any request
    else:
        # The endpoint check asks the server what it serves; no evaluation request is sent.
        assert other.stats()["completions"] <= CHECK_COMPLETIONS


def test_forced_resume_mixes_runs_and_says_so(
    pytester: pytest.Pytester, make_server: MakeServer
) -> None:
    srv = make_server()
    _finished_run(pytester, srv, config_option(pytester.path, MMLU))
    other = make_server(model="another-model")
    cfg = config_option(pytester.path, {**MMLU, "mini_arc": offline_task("mini_arc", limit=2)})
    result = pytester.runpytest(
        f"--evalchemy-endpoint={other.completions_url}",
        cfg,
        "--evalchemy-resume=r",
        "--evalchemy-resume-force",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "evalchemy: --evalchemy-resume-force: mixing two runs in r (config sha256 *; served model*"
        ]
    )
    summary = read_run_summary(pytester.path / "results", "r")
    (resume,) = summary["resumes"]
    assert resume["forced"] is True
    assert [d.split(" ", 1)[0] for d in resume["differences"]] == ["config", "served"]
    assert summary["identity"]["model"] == "another-model"
    assert summary["tasks"]["mini_mmlu/mini_mmlu"]["resumed"] is True


def test_resume_of_the_same_run_is_accepted_and_recorded(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = config_option(pytester.path, MMLU)
    _finished_run(pytester, server, cfg)
    pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-resume=r"
    ).assert_outcomes(passed=1)
    summary = read_run_summary(pytester.path / "results", "r")
    assert [(r["forced"], r["differences"]) for r in summary["resumes"]] == [(False, [])]
    identity = summary["identity"]
    assert identity["model"] == server.model
    assert identity["max_model_len"] == 16384
    assert identity["tokenizer"] == "remote"
    assert identity["config_sha256"] == summary["config"]["sha256"]
    assert "chat" in identity


def test_resume_force_without_resume_is_a_usage_error(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(pytester.path, MMLU),
        "--evalchemy-resume-force",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--evalchemy-resume-force completes a run: give it with*"])


# ---------------------------------------------------------------- what an early-ended run leaves


@pytest.mark.parametrize("xdist", [[], ["-n", "1"]], ids=["serial", "xdist"])
def test_interrupted_run_lists_pending_and_skipped_items(
    tmp_path: Path, make_server: MakeServer, xdist: list[str]
) -> None:
    # Completion requests after the 10th wait until release(): interrupted mid-item, always.
    srv = make_server(hold_after=10)
    tasks = {
        "mini_arc": offline_task(
            "mini_arc", limit=12, batch_size=1, num_fewshot=0, priority="high"
        ),
        "mini_mmlu": offline_task("mini_mmlu", limit=2),
        "mini_hellaswag": offline_task("mini_hellaswag", limit=2, enabled=False),
    }
    proc = start_pytest(
        tmp_path,
        f"--evalchemy-endpoint={srv.url}",
        config_option(tmp_path, tasks),
        "--evalchemy-run-id=cut",
        *xdist,
    )
    with _stopped_at_end(proc):
        wait_for(lambda: srv.stats()["faults"]["held"] >= 1, proc)
        os.kill(proc.pid, signal.SIGINT)
        srv.release()  # the signal is sent: whether the answer still arrives decides nothing
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    summary = read_run_summary(tmp_path / "results", "cut")
    assert {k: (v["status"], v["message"]) for k, v in summary["tasks"].items()} == {
        "mini_arc/mini_arc": ("interrupted", summary["tasks"]["mini_arc/mini_arc"]["message"]),
        "mini_mmlu/mini_mmlu": ("pending", "not started"),
        "mini_hellaswag/mini_hellaswag": ("skipped", "disabled in config"),
    }
    assert summary["totals"]["pending"] == 1
    check_summary(summary)  # an interrupted run's summary is a summary of the schema


# ---------------------------------------------------------------- -k and -m decide the tokenizer


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
@pytest.mark.parametrize("select", [["-k", "mini_gsm8k"], ["-m", "not timeout"]], ids=["k", "m"])
def test_deselected_items_decide_nothing(
    pytester: pytest.Pytester, make_server: MakeServer, select: list[str], xdist: list[str]
) -> None:
    srv = make_server(no_tokenizer_endpoints=True)
    tasks = {
        "mini_arc": offline_task("mini_arc", limit=2, timeout=600),  # loglikelihood: a tokenizer
        "mini_gsm8k": offline_task("mini_gsm8k", limit=2),  # generation: none
    }
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={srv.completions_url}",
        config_option(pytester.path, tasks),
        "--evalchemy-run-id=k",
        *select,
        *xdist,
    )
    # (xdist's workers deselect; its controller does not count them)
    result.assert_outcomes(passed=1, deselected=0 if xdist else 1)
    assert list(read_run_summary(pytester.path / "results", "k")["tasks"]) == [
        "mini_gsm8k/mini_gsm8k"
    ]


def test_endpoint_failure_fails_only_the_selected_items(
    pytester: pytest.Pytester, make_server: MakeServer
) -> None:
    srv = make_server(no_tokenizer_endpoints=True)
    tasks = {"mini_arc": offline_task("mini_arc"), "mini_mmlu": offline_task("mini_mmlu")}
    result = pytester.runpytest(
        f"--evalchemy-endpoint={srv.completions_url}",
        config_option(pytester.path, tasks),
        "--evalchemy-run-id=e",
        "-k",
        "mini_arc",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert {
        k: v["status"] for k, v in read_run_summary(pytester.path / "results", "e")["tasks"].items()
    } == {"mini_arc/mini_arc": "error"}


@pytest.mark.parametrize(
    "expression",
    [
        ["-k", "mini_arc"],
        ["-k", "not ARC"],
        ["-k", "sub and gsm"],
        ["-k", "eval.json and not mmlu"],
        ["-k", "nothing"],
        ["-k", "hellaswag"],  # an lm-eval task name of an item
        ["-m", "timeout"],
        ["-m", "not timeout", "-k", "mini"],
    ],
)
def test_the_plugins_selection_is_pytests(pytester: pytest.Pytester, expression: list[str]) -> None:
    """The selection the endpoint check uses equals what pytest collects, folders included."""
    tasks = {
        "mini_arc": offline_task("mini_arc", timeout=60),
        "arc_twin": offline_task("mini_arc", tasks=["mini_arc", "mini_hellaswag"]),
        "mini_gsm8k": offline_task("mini_gsm8k"),
        "mini_mmlu": offline_task("mini_mmlu", enabled=False),
    }
    (pytester.path / "sub").mkdir()
    pytester.makeconftest(
        "from pytest_evalchemy.glue.selection import selected_keys\n"
        "from pytest_evalchemy.glue.state import STATE\n"
        "def pytest_collection_finish(session):\n"
        "    state = session.config.stash[STATE]\n"
        "    mine = selected_keys(session.config, state.plan, state.options.config_path, None)\n"
        "    theirs = {i.planned.key for i in session.items if i.planned.enabled}\n"
        "    print('SAME' if mine == theirs else f'DIFFERENT {sorted(mine)} {sorted(theirs)}')\n"
    )
    result = pytester.runpytest(
        "--evalchemy-endpoint=http://127.0.0.1:9/v1/completions",
        config_option(pytester.path / "sub", tasks),
        "--collect-only",
        "-s",
        *expression,
    )
    result.stdout.fnmatch_lines(["SAME"])


# ---------------------------------------------------------------- a timed-out item's report


def test_timed_out_item_reports_its_own_stack_in_a_few_lines(
    pytester: pytest.Pytester, make_server: MakeServer
) -> None:
    srv = make_server(latency=0.3)
    # 48 requests of 0.3 s, far past the timeout (which leaves lm-eval the time to load).
    tasks = {"slow": offline_task("mini_arc", limit=12, batch_size=1, num_fewshot=0, timeout=8)}
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={srv.completions_url}",
        config_option(pytester.path, tasks),
        "--evalchemy-concurrency=1",  # one at a time, so the item cannot finish in time
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.lines
    assert not [line for line in out if "Stack of" in line]  # no thread dumps
    start = out.index("Timeout (>8.0s) from pytest-timeout.")
    # The stack ends where the pointer to the item's lm-eval log (and its last warnings) begins.
    log_pointer = ("lm-eval log: ", "last warnings of lm-eval's log: ")
    end = next(i for i, line in enumerate(out) if line.startswith(log_pointer))
    report = out[start : end + 1]
    assert len(report) <= 25, "\n".join(report)
    assert report[1].startswith("where it was (innermost last")
    frames = report[2:-1]
    assert any("/lm_eval/" in line for line in frames)
    assert not any("pytest_timeout" in line for line in frames)
    assert len(out) < 150  # the whole output, captured log included (2,045 lines before)
    (summary,) = (pytester.path / "results").glob("*/evalchemy_summary_*.json")
    assert json.loads(summary.read_text())["tasks"]["slow/slow"]["status"] == "timeout"


# ---------------------------------------------------------------- Ctrl-C after the summary


def test_interrupt_after_the_summary_keeps_the_exit_status(
    tmp_path: Path, server: EvalchemyTestServer
) -> None:
    # Ctrl-C while pytest prints its last lines (the terminal summary).
    (tmp_path / "conftest.py").write_text(
        "import os, signal\n"
        "import pytest\n"
        "@pytest.hookimpl(trylast=True)\n"
        "def pytest_terminal_summary(terminalreporter):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    terminalreporter.write_line('after the interrupt')\n"
    )
    proc = start_pytest(
        tmp_path,
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(tmp_path, MMLU),
        "--evalchemy-run-id=late",
    )
    with _stopped_at_end(proc):
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "KeyboardInterrupt" not in out
    assert "evalchemy: interrupt ignored: the run is over and its summary written" in out
    assert "after the interrupt" in out
    assert read_run_summary(tmp_path / "results", "late")["exit_status"] == 0
