"""What a user of another project meets first: `evalchemy init`, the missing-config and
missing-extra messages, hooks from the project's conftest, a replayable lm-eval command with
include paths, data-path errors, file modes, and a quiet, consistent terminal."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pytest_evalchemy.core.config import load_config
from pytest_evalchemy.core.resources import schema_path
from pytest_evalchemy.core.results import atomic_write_text
from pytest_evalchemy.testing.hf_tokenizer import write_hf_tokenizer
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import (
    OFFLINE_CONFIG,
    REPO,
    config_option,
    offline_task,
    read_summary,
    start_pytest,
    wait_for_requests,
    write_config,
)

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _evalchemy(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_evalchemy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def _user_tasks(folder: Path, name: str = "my_arc") -> Path:
    """A task folder of the user's own: a copy of mini_arc under another name, loading its
    data next to the YAML with ``custom_dataset: !function`` (relocatable)."""
    folder.mkdir(parents=True, exist_ok=True)
    yaml_text = (REPO / "benchmarks" / "mini_arc.yaml").read_text(encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        yaml_text.replace("task: mini_arc", f"task: {name}"), encoding="utf-8"
    )
    (folder / "offline_data.py").write_text(
        (REPO / "benchmarks" / "offline_data.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (folder / "data").mkdir(exist_ok=True)
    for data in (REPO / "benchmarks" / "data").glob("*.jsonl"):
        (folder / "data" / data.name).write_bytes(data.read_bytes())
    return folder


# ---------------------------------------------------------------- evalchemy init


def test_init_writes_a_starting_point_and_keeps_existing_files(tmp_path: Path) -> None:
    done = _evalchemy("init", "proj", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    proj = tmp_path / "proj"
    for name in ("eval_config.json", "offline_config.json"):
        config = load_config(proj / "configs" / name)  # valid against the schema
        assert config.tasks
    public = load_config(proj / "configs" / "eval_config.json")
    assert {t.key for t in public.tasks} >= {"arc_easy", "arc_challenge", "hellaswag"}
    assert json.loads((proj / "configs" / "eval_config.schema.json").read_text()) == json.loads(
        schema_path().read_text()
    )
    compile((proj / "conftest.py").read_text(), "conftest.py", "exec")
    workflow = yaml.safe_load((proj / ".github" / "workflows" / "evalchemy.yml").read_text())
    assert "evaluate" in workflow["jobs"]
    assert "wrote    configs/eval_config.json" in done.stdout
    assert "next:" in done.stdout

    # A second time nothing is replaced; the hooks go beside the conftest.py that exists.
    (proj / "configs" / "eval_config.json").write_text("{}", encoding="utf-8")
    again = _evalchemy("init", "proj", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (proj / "configs" / "eval_config.json").read_text() == "{}"
    assert "kept     configs/eval_config.json" in again.stdout
    assert (proj / "evalchemy_conftest_example.py").exists()
    forced = _evalchemy("init", "proj", "--force", cwd=tmp_path)
    assert forced.returncode == 0
    assert load_config(proj / "configs" / "eval_config.json").tasks


def test_init_workflow_passes_zizmor(tmp_path: Path) -> None:
    import shutil

    from pytest_evalchemy import __version__

    assert _evalchemy("init", "proj", cwd=tmp_path).returncode == 0
    workflow = tmp_path / "proj" / ".github" / "workflows" / "evalchemy.yml"
    text = workflow.read_text(encoding="utf-8")
    # The plugin at the version that wrote it; every action at a commit, its release beside it.
    assert f'pip install "pytest-evalchemy=={__version__}"' in text
    uses = [line.split("uses: ", 1)[1] for line in text.splitlines() if "uses: " in line]
    assert len(uses) == 3
    for use in uses:
        ref, _, release = use.partition("  # ")
        assert len(ref.split("@")[1]) == 40, use
        assert release.startswith("v"), use
    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent))
    assert zizmor, "zizmor is in the test group: pip install --group test -e ."
    for persona in ("regular", "pedantic"):
        done = subprocess.run(
            [zizmor, "--offline", f"--persona={persona}", "--no-progress", str(workflow)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "No findings to report" in done.stdout + done.stderr


def test_init_project_runs_with_its_conftest_hook(
    pytester: pytest.Pytester, server: EvalchemyTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = _evalchemy("init", cwd=pytester.path)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("GITHUB_SHA", "abc123")
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        "--evalchemy-config=configs/offline_config.json",
        "--evalchemy-limit=4",
        "-k",
        "mini_arc",
    )
    result.assert_outcomes(passed=1, deselected=3)
    assert read_summary(pytester.path / "results")["commit"] == "abc123"


# ---------------------------------------------------------------- messages before the run


def test_missing_config_says_how_to_make_one(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    result = pytester.runpytest(f"--evalchemy-endpoint={server.completions_url}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*configs/eval_config.json: config file not found; pass --evalchemy-config PATH, or "
            f"run `evalchemy init` to write a starting config (schema: {schema_path()})"
        ]
    )
    assert schema_path().is_file()


def test_front_end_names_its_own_flag(tmp_path: Path, server: EvalchemyTestServer) -> None:
    done = _evalchemy(
        "--endpoint", server.completions_url, "--config", "nope.json", "--", "-q", cwd=tmp_path
    )
    assert done.returncode == 4
    assert "nope.json: config file not found; pass --config PATH, or run `evalchemy init`" in (
        done.stderr
    )
    assert "--evalchemy-config" not in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


def test_local_tokenizer_without_transformers_is_one_line_before_the_run(
    pytester: pytest.Pytester, make_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server()
    # As in an environment without the [hf] extra: the import system finds no transformers.
    monkeypatch.setitem(sys.modules, "transformers", None)
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        f"--evalchemy-config={OFFLINE_CONFIG}",
        f"--evalchemy-tokenizer={pytester.path}",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --evalchemy-tokenizer *: a local tokenizer needs transformers, which is not "
            "installed: pip install 'pytest-evalchemy[[]hf]'*"  # [[] is fnmatch's "["
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert server.stats()["requests"] == {}  # not even the endpoint check


# ---------------------------------------------------------------- hooks


def test_item_request_hook_of_the_project_applies_to_a_config_elsewhere(
    pytester: pytest.Pytester, server: EvalchemyTestServer, tmp_path_factory
) -> None:
    pytester.makeconftest(
        "import dataclasses\n"
        "def pytest_evalchemy_item_request(item, request):\n"
        "    return dataclasses.replace(request, limit=2)\n"
    )
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    cfg = write_config(elsewhere / "cfg.json", {"tasks": {"mini_arc": offline_task("mini_arc")}})
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}", f"--evalchemy-config={cfg}"
    )
    result.assert_outcomes(passed=1)
    record = read_summary(pytester.path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["settings"]["limit"] == 2  # the config says 8
    assert record["n_samples"]["mini_arc"]["effective"] == 2


# ---------------------------------------------------------------- a replayable command


def test_recorded_command_with_include_paths_replays_to_the_same_metrics(
    pytester: pytest.Pytester, make_server
) -> None:
    # A model trained with the BOS, served under its tokenizer's folder (as vLLM serves a
    # path): the command names that tokenizer to start its prompts with the BOS, and a
    # replay without it would score otherwise.
    tokenizer = write_hf_tokenizer(pytester.path / "model")
    server = make_server(model=str(tokenizer), bos_trained=True)
    _user_tasks(pytester.path / "my_tasks")
    cfg = write_config(
        pytester.path / "eval.json",
        {"include_paths": ["my_tasks"], "tasks": {"my_arc": offline_task("my_arc")}},
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        f"--evalchemy-config={cfg}",
        "--evalchemy-no-cache",  # the replay must ask the server, not read the item's cache
        "--evalchemy-run-id=replay",
    )
    result.assert_outcomes(passed=1)
    record = read_summary(pytester.path / "results")["tasks"]["my_arc/my_arc"]
    command = record["lm_eval_command"].split()
    assert command.count("--include_path") == 0
    lm_eval_config = Path(command[command.index("--config") + 1])
    assert yaml.safe_load(lm_eval_config.read_text())["include_path"] == [
        str(REPO / "benchmarks"),
        str(pytester.path / "my_tasks"),
    ]

    # The real lm-eval CLI of this environment, from another folder, offline.
    lm_eval = Path(sys.executable).parent / "lm-eval"
    replay_dir = pytester.path / "replay"
    replay_dir.mkdir()
    before = server.stats()["completions"]
    done = subprocess.run(
        [str(lm_eval), *command[1:], "--output_path", str(replay_dir / "out")],
        cwd=replay_dir,
        env={**os.environ, **OFFLINE_ENV, "HF_HOME": str(pytester.path / "hf")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert server.stats()["completions"] > before
    (results_file,) = (replay_dir / "out").rglob("results_*.json")
    replayed = json.loads(results_file.read_text())["results"]["my_arc"]
    mine = record["metrics"]["my_arc"]
    assert {k: replayed[k] for k in mine} == mine


# ---------------------------------------------------------------- data paths


def test_relative_data_files_error_says_where_the_file_is_and_the_fix(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    tasks = pytester.path / "project" / "my_tasks"
    (tasks / "data").mkdir(parents=True)
    rows = (REPO / "benchmarks" / "data" / "mini_arc.jsonl").read_text(encoding="utf-8")
    (tasks / "data" / "x.jsonl").write_text(rows, encoding="utf-8")
    yaml_text = (REPO / "benchmarks" / "mini_arc.yaml").read_text(encoding="utf-8")
    (tasks / "rel_arc.yaml").write_text(
        yaml_text.replace("task: mini_arc", "task: rel_arc")
        .replace("custom_dataset: !function offline_data.mini_arc", "dataset_path: json")
        .replace("test: data/mini_arc.jsonl", "test: data/x.jsonl"),
        encoding="utf-8",
    )
    cfg = write_config(
        pytester.path / "project" / "eval.json",
        {"include_paths": ["my_tasks"], "tasks": {"rel_arc": offline_task("rel_arc")}},
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}", f"--evalchemy-config={cfg}"
    )
    result.assert_outcomes(failed=1)
    record = read_summary(pytester.path / "results")["tasks"]["rel_arc/rel_arc"]
    assert record["status"] == "error"
    assert f"Unable to find '{pytester.path / 'data' / 'x.jsonl'}'" in record["message"]
    assert (
        f"lm-eval reads a task's data_files from the working directory ({pytester.path}), not "
        f"from the task's folder; {tasks / 'data' / 'x.jsonl'} exists next to "
        f"{tasks / 'rel_arc.yaml'}: give data_files as an absolute path, or load the data with "
        "`custom_dataset: !function module.function`"
    ) in record["message"]
    result.stdout.fnmatch_lines(["*exists next to*rel_arc.yaml: give data_files as an absolute*"])


# ---------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~umask


def test_run_files_are_readable_as_the_umask_allows(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    cfg = write_config(
        pytester.path / "eval.json", {"tasks": {"mini_arc": offline_task("mini_arc")}}
    )
    old = os.umask(0o027)
    try:
        result = pytester.runpytest(
            f"--evalchemy-endpoint={server.completions_url}",
            f"--evalchemy-config={cfg}",
            f"--evalchemy-markdown={pytester.path / 'scores.md'}",
            "--evalchemy-run-id=modes",
        )
    finally:
        os.umask(old)
    result.assert_outcomes(passed=1)
    root = pytester.path / "results" / "modes"
    files = [
        root / "evalchemy_summary_modes.json",
        root / "report.html",
        root / "mini_arc_results.json",
        root / "items" / "mini_arc" / "mini_arc" / "results.json",
        pytester.path / "scores.md",
    ]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {
        f.name: oct(0o640) for f in files
    }


# ---------------------------------------------------------------- a quiet terminal


def test_no_git_or_torch_noise(pytester: pytest.Pytester, server: EvalchemyTestServer) -> None:
    cfg = write_config(
        pytester.path / "eval.json", {"tasks": {"mini_arc": offline_task("mini_arc")}}
    )
    # -s: what lm-eval and its imports print reaches the terminal as it would under xdist.
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}", f"--evalchemy-config={cfg}", "-s"
    )
    result.assert_outcomes(passed=1)
    out = result.stdout.str() + result.stderr.str()
    assert "not a git repository" not in out
    assert "PyTorch was not found" not in out


def test_failed_item_report_is_the_message_and_a_short_log_tail(
    pytester: pytest.Pytester, server: EvalchemyTestServer
) -> None:
    # A task whose data loader raises once lm-eval has logged its INFO records.
    tasks = pytester.path / "my_tasks"
    tasks.mkdir()
    yaml_text = (REPO / "benchmarks" / "mini_arc.yaml").read_text(encoding="utf-8")
    (tasks / "broken.yaml").write_text(
        yaml_text.replace("task: mini_arc", "task: broken").replace(
            "offline_data.mini_arc", "broken_data.load"
        ),
        encoding="utf-8",
    )
    (tasks / "broken_data.py").write_text(
        "def load(**kwargs):\n    raise ValueError('the data set is not there yet')\n",
        encoding="utf-8",
    )
    cfg = write_config(
        pytester.path / "eval.json",
        {"include_paths": ["my_tasks"], "tasks": {"broken": offline_task("broken")}},
    )
    result = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}", f"--evalchemy-config={cfg}"
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    section = out[out.index("___ broken::broken ___") : out.index("evalchemy scores")]
    message = "broken/broken: lm-eval failed: ValueError: the data set is not there yet"
    # The one-line message first, then the last frames of where it was raised.
    assert section.splitlines()[1] == message
    assert "where it was raised (last 6 frames, innermost last; --tb=long shows all):" in section
    assert "Traceback" not in section  # Python's header means an exception nothing caught
    assert 'broken_data.py", line 2, in load' in section
    assert "last warnings of lm-eval's log: " in section
    assert "Captured" not in section
    assert " INFO " not in section
    assert "it/s]" not in section  # no progress bars
    assert len(section.splitlines()) <= 40
    # The item's log says why it ended, with the whole traceback.
    log = next((pytester.path / "results").glob("*/items/broken/broken/lm_eval.log"))
    logged = log.read_text(encoding="utf-8")
    assert f"evalchemy: lm-eval failed: {message.split(': ', 2)[2]}" in logged
    assert 'broken_data.py", line 2, in load' in logged
    assert logged.count("  File ") > 6

    # --tb=long: all of it; --tb=line: the message alone.
    long = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}", f"--evalchemy-config={cfg}", "--tb=long"
    ).stdout.str()
    long_section = long[long.index("___ broken::broken ___") : long.index("evalchemy scores")]
    assert long_section.count("  File ") == logged.count("  File ")
    assert "last 6 frames" not in long_section
    assert "where it was raised (innermost last):" in long_section
    line = pytester.runpytest_subprocess(
        f"--evalchemy-endpoint={server.completions_url}", f"--evalchemy-config={cfg}", "--tb=line"
    ).stdout.str()
    assert message in line
    assert "where it was raised" not in line
    # The table's word and pytest's: the legend says how they relate.
    result.stdout.fnmatch_lines(
        [
            "broken *broken *- *- *error *",
            "status: pytest counts these as failed (F): error: lm-eval or the endpoint failed",
        ]
    )


def test_header_lists_every_endpoint(pytester: pytest.Pytester, make_server) -> None:
    a, b = make_server(), make_server()
    result = pytester.runpytest(
        f"--evalchemy-endpoint={a.completions_url}",
        f"--evalchemy-endpoint={b.completions_url}",
        config_option(pytester.path, {"mini_arc": offline_task("mini_arc", limit=2)}),
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"evalchemy: endpoints {a.completions_url}, {b.completions_url}*, model *"]
    )
    summary = read_summary(pytester.path / "results")
    assert summary["endpoints"] == [a.completions_url, b.completions_url]


def test_dry_run_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # Larger than a pipe's buffer, so the writer meets the closed pipe.
    tasks = {f"t{i}": {"tasks": ["mini_arc"], "limit": 1} for i in range(300)}
    cfg = write_config(tmp_path / "big.json", {"tasks": tasks})
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_evalchemy", "--dry-run", "--config", str(cfg)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As a shell pipeline's writer: SIGPIPE ignored by Python, EPIPE on write.
        restore_signals=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline().startswith(b"dry run:")
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err


# ---------------------------------------------------------------- interrupted and resumed items


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_interrupted_item_records_its_time_and_requests(
    tmp_path: Path, make_server, workers: list[str]
) -> None:
    # The 21st completion request (the probe counted) waits until release(): the item is
    # interrupted mid-way however fast this machine is. The latency gives it a time to record.
    server = make_server(latency=0.05, hold_after=20)
    tasks = {"mini_arc": offline_task("mini_arc", limit=12, batch_size=1, num_fewshot=0)}
    # One request at a time: at most one in flight when interrupted.
    proc = start_pytest(
        tmp_path,
        f"--evalchemy-endpoint={server.completions_url}",
        config_option(tmp_path, tasks),
        "--evalchemy-run-id=i",
        "--evalchemy-concurrency=1",
        *workers,
    )
    wait_for_requests(server, 1, proc, key="held")
    # Ctrl-C in a terminal reaches the whole process group (xdist's workers too).
    os.killpg(proc.pid, signal.SIGINT)
    server.release()  # the signal is sent: whether the answer still arrives decides nothing
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    record = read_summary(tmp_path / "results")["tasks"]["mini_arc/mini_arc"]
    assert record["status"] == "interrupted"
    assert record["duration_s"] >= 20 * 0.05
    # What it had sent: answered requests, not the endpoint check's probe nor one in flight.
    assert 0 < record["requests"]["done"] <= server.stats()["completions"] - 1


def test_resumed_finished_item_keeps_its_time_and_requests(
    tmp_path: Path, server: EvalchemyTestServer
) -> None:
    cfg = config_option(tmp_path, {"mini_mmlu": offline_task("mini_mmlu", limit=4)})
    proc = start_pytest(
        tmp_path, f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-run-id=kept"
    )
    assert proc.wait(timeout=120) == 0
    summary_path = tmp_path / "results" / "kept" / "evalchemy_summary_kept.json"
    first = json.loads(summary_path.read_text())["tasks"]["mini_mmlu/mini_mmlu"]
    proc = start_pytest(
        tmp_path, f"--evalchemy-endpoint={server.completions_url}", cfg, "--evalchemy-resume=kept"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    again = json.loads(summary_path.read_text())["tasks"]["mini_mmlu/mini_mmlu"]
    assert again["resumed"] is True
    assert again["duration_s"] == first["duration_s"] > 0
    assert again["requests"] == first["requests"]
    assert again["requests"]["done"] > 0
