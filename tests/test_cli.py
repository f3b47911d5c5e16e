"""The command line of run_evalchemy.sh: flags, the modes that run nothing, usage errors, and
real runs through the shell script against the test server."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.cli import frontend as cli
from pytest_evalchemy.core.config import load_config
from pytest_evalchemy.testing.answer_key import expected_accuracy, load_answer_key
from pytest_evalchemy.testing.processes import spawn
from pytest_evalchemy.testing.server import READY_PREFIX

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run_evalchemy.sh"
EVAL_CONFIG = REPO / "configs" / "eval_config.json"
OFFLINE_CONFIG = REPO / "configs" / "offline_config.json"
SECRET = "sk-test-secret-4711"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a child run: offline HF stack, none of the outer run's settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "EVALCHEMY_")) and k not in cli.API_KEY_ENVS
    }
    env |= {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(REPO / ".cache" / "hf"),
        "TQDM_DISABLE": "1",
    }
    return env | extra


def script(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ./run_evalchemy.sh from the repository root, as the seed guide does."""
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=REPO,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_outer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EVALCHEMY_ENDPOINT", "EVALCHEMY_CONFIG", "EVALCHEMY_OUTPUT", "EVALCHEMY_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in cli.API_KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``main`` expecting a usage error; returns stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    assert exc.value.code == cli.EXIT_USAGE_ERROR
    return capsys.readouterr().err


# ---------------------------------------------------------------- the pieces, in-process


def test_exit_codes_are_pytests() -> None:
    assert cli.EXIT_OK == pytest.ExitCode.OK
    assert cli.EXIT_TESTS_FAILED == pytest.ExitCode.TESTS_FAILED
    assert cli.EXIT_INTERRUPTED == pytest.ExitCode.INTERRUPTED
    assert cli.EXIT_INTERNAL_ERROR == pytest.ExitCode.INTERNAL_ERROR
    assert cli.EXIT_USAGE_ERROR == pytest.ExitCode.USAGE_ERROR
    assert cli.EXIT_NO_TESTS == pytest.ExitCode.NO_TESTS_COLLECTED


def _opts(*args: str, pytest_args: tuple[str, ...] = ()) -> cli.CliOptions:
    return cli.resolve(cli.build_parser().parse_args(list(args)), pytest_args)


def test_flags_map_onto_plugin_options(tmp_path: Path) -> None:
    opts = _opts(
        "--endpoint=http://host:8000",
        "--config", str(OFFLINE_CONFIG),
        "--output", str(tmp_path / "out"),
        "--run-id", "r1",
        "--model", "m",
        "--batch-size", "8",
        "--max-length", "4096",
        "--log-level", "debug",
        pytest_args=("-k", "arc", "-n", "2"),
    )  # fmt: skip
    assert cli.pytest_command(opts, system="Linux") == [
        sys.executable,
        "-m",
        "pytest",
        "--evalchemy-endpoint=http://host:8000/v1/completions",
        f"--evalchemy-config={OFFLINE_CONFIG}",
        f"--evalchemy-output={tmp_path / 'out'}",
        "--evalchemy-run-id=r1",
        "--evalchemy-model=m",
        "--evalchemy-batch-size=8",
        "--evalchemy-max-length=4096",
        "--evalchemy-log-level=DEBUG",
        "--log-level=DEBUG",
        "-k",
        "arc",
        "-n",
        "2",
    ]


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("EVALCHEMY_ENDPOINT", "http://envhost:9000/v1")
    opts = _opts()
    assert opts.endpoint == "http://envhost:9000/v1/completions"
    assert opts.config == EVAL_CONFIG
    assert opts.output == REPO / "results"
    stamp, _, pid = opts.run_id.rpartition("_")
    assert time.strptime(stamp, "%Y%m%d_%H%M%S")
    assert pid == str(os.getpid())
    # Relative paths are the caller's, made absolute before pytest sees them.
    monkeypatch.chdir(tmp_path)
    opts = _opts("--config", "c.json", "--output", "res")
    assert (opts.config, opts.output) == (tmp_path / "c.json", tmp_path / "res")


def test_gpu_goes_to_the_server_the_run_starts() -> None:
    with_serve = _opts("--serve", "my-model", "--gpu", "0,1")
    assert with_serve.endpoint is None
    cmd = cli.pytest_command(with_serve, system="Linux")
    assert "--evalchemy-serve=my-model" in cmd
    assert "--evalchemy-gpu=0,1" in cmd
    assert cli.gpu_warnings("0,1", "my-model", "Linux") == []
    assert "--evalchemy-gpu=0,1" not in cli.pytest_command(with_serve, system="Darwin")
    assert "ignored on Darwin" in cli.gpu_warnings("0,1", "my-model", "Darwin")[0]
    (warning,) = cli.gpu_warnings("0", None, "Linux")
    assert "--serve MODEL" in warning
    assert "ignored" in warning


def test_gpu_warning_printed_without_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--dry-run", "--gpu", "0", "--endpoint", "http://h:1"]) == 0
    assert "warning: --gpu only applies to a server the run starts" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no endpoint: pass --endpoint URL"),
        (
            ("--endpoint", "http://h:1", "--run-id", "../up"),
            "--run-id: run id '../up' is not a safe",
        ),
        (("--endpoint", "http://h:1", "--run-id", "a b"), "not a safe folder name"),
        (("--endpoint", "ftp://h"), "--endpoint: endpoint 'ftp://h' is not an http(s) URL"),
        (("--endpoint", "http://h:1", "-k", "arc"), "pytest options go after --"),
        (("--list-benchmarks", "--dry-run"), "not allowed with argument"),
        (("--log-level", "LOUD"), "expected one of DEBUG, INFO, WARNING, ERROR"),
        (("--batch-size", "0"), "must be at least 1"),
        (("--max-length", "many"), "expected a whole number"),
        (("--serve", "m", "--endpoint", "http://h:1"), "give one"),
        (("--serve", "m", "--gpu", "0; rm"), "--gpu: expected GPU ids"),
    ],
)
def test_usage_errors_exit_4(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    err = usage_error(capsys, *args)
    assert message in err
    assert "usage:" in err


def test_list_benchmarks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["--list-benchmarks"]) == 0  # the default config, no endpoint
    out = capsys.readouterr().out
    assert f"config: {EVAL_CONFIG}" in out
    lines = out.splitlines()
    # benchmark table: name, enabled, tasks, description
    assert any(
        line.split()[:3] == ["mmlu", "no", "mmlu"] and "Massive Multitask" in line for line in lines
    )
    # task table: key, enabled, lm-eval tasks, few-shot, limit, batch, timeout
    assert any(
        line.split()[:7] == ["arc_easy", "yes", "arc_easy", "25", "1", "1", "-"] for line in lines
    )
    assert any(line.split()[:5] == ["gsm8k", "no", "gsm8k", "5", "1"] for line in lines)
    assert "items a run would execute (3 of 5):" in out
    assert any(line.split() == ["run", "hellaswag/hellaswag"] for line in lines)
    assert any(
        line.split()[:2] == ["skipped", "mmlu/mmlu"] and "disabled" in line for line in lines
    )


def test_list_benchmarks_of_an_invalid_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = write(tmp_path / "bad.json", '{"tasks": {"a": {"limit": 1,}}}')
    assert cli.main(["--list-benchmarks", "--config", str(bad)]) == cli.EXIT_USAGE_ERROR
    assert "JSON syntax error" in capsys.readouterr().err


VALID = {
    "benchmarks": {
        "arc": {"tasks": ["arc_easy", "mini_arc"]},
        "science": {"tasks": ["ai2_arc"], "enabled": False},  # an lm-eval tag
        "more": {"tasks": ["hellaswag"], "description": "no task entry: lm-eval defaults"},
    },
    "tasks": {
        "arc_easy": {"tasks": ["arc_easy"], "num_fewshot": 25, "limit": 1},
        "mini_arc": {"tasks": ["mini_arc"], "limit": 5},
        "off": {"tasks": ["mini_gsm8k"], "enabled": False},
    },
}


def test_validate_good_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path / "good.json", VALID)
    assert cli.main(["--validate-config", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"config OK: 3 benchmarks, 3 tasks, 3 items would run ({config})"
    # Public tasks' data is on the hub: not downloaded to check few-shot counts, and said so.
    assert captured.err == (
        "note: num_fewshot and limit not checked against the data of arc_easy, hellaswag: "
        "their data is not local (a hub data set is not downloaded to check it)\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{\n  "tasks": {\n    "a": {"tasks": ["mini_arc"], "limit": 1,}\n  }\n}\n',
            ["line 3, column 45: JSON syntax error", "trailing comma"],
            id="trailing-comma",
        ),
        pytest.param(
            {"tasks": {"a": {"tasks": ["mini_arc"], "limt": 1}}},
            ["tasks.a.limt: unknown key 'limt'"],
            id="unknown-key",
        ),
        pytest.param(
            {"tasks": {"a": {"num_fewshot": -1, "limit": 0}}},
            ["tasks.a.num_fewshot: -1 is out of range", "tasks.a.limit: invalid limit 0"],
            id="out-of-range",
        ),
        pytest.param(
            {"benchmarks": {"b": {"tasks": ["mini_arc", "mini_arc"]}}},
            ["benchmarks.b.tasks[1]: 'mini_arc' is listed twice"],
            id="duplicate",
        ),
        pytest.param(
            {"benchmarks": {"b": {"tasks": ["arc_esay"]}}},
            ["benchmarks.b.tasks[0]: unknown task 'arc_esay'", "did you mean 'arc_easy'"],
            id="unknown-benchmark-task",
        ),
        pytest.param(
            {"tasks": {"t": {"tasks": ["mini_arc", "mini_ark"]}}},
            ["tasks.t.tasks[1]: unknown task 'mini_ark'", "did you mean 'mini_arc'"],
            id="unknown-lm-eval-task",
        ),
    ],
)
def test_validate_bad_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: Any, expected: list[str]
) -> None:
    config = write(tmp_path / "bad.json", text)
    assert cli.main(["--validate-config", "--config", str(config)]) == cli.EXIT_USAGE_ERROR
    captured = capsys.readouterr()
    assert "config OK" not in captured.out
    assert captured.err.startswith(f"config INVALID: {config}")
    problems = captured.err.splitlines()[1:]
    for fragment in expected:
        assert any(fragment in line for line in problems), (fragment, problems)


def test_validate_warns_about_unknown_names_of_disabled_items(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write(
        tmp_path / "c.json",
        {
            "benchmarks": {"later": {"tasks": ["not_yet_a_task"], "enabled": False}},
            "tasks": {"mini_arc": {}},
        },
    )
    assert cli.main(["--validate-config", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "config OK: 1 benchmarks, 1 tasks, 1 items would run" in captured.out
    assert "warning:" in captured.err
    assert "'not_yet_a_task'" in captured.err


def test_dry_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVALCHEMY_API_KEY", SECRET)
    output = tmp_path / "results"
    args = ["--dry-run", "--endpoint", "http://u:pw@h:8000/v1", "--config", str(EVAL_CONFIG)]
    args += ["--output", str(output), "--run-id", "dr1", "--batch-size", "2", "--", "-k", "arc"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert not output.exists()
    assert SECRET not in out
    assert "pw" not in out
    commands = [line for line in out.splitlines() if "lm-eval run" in line]
    assert len(commands) == 3  # the enabled items; mmlu and gsm8k are disabled
    for command in commands:
        assert command.startswith("OPENAI_API_KEY=*** lm-eval run --model local-completions")
        assert "'model=<first model of /v1/models>'" in command
        assert "base_url=http://h:8000/v1/completions" in command
        assert "max_length=2048" in command
        assert "--batch_size 2" in command
    assert "--tasks arc_easy --num_fewshot 25 --batch_size 2 --limit 1" in commands[0]
    assert "max_length=2048 is the default" in out
    assert "# mmlu/mmlu: skipped (disabled in config)" in out
    pytest_line = out.strip().splitlines()[-1]
    assert pytest_line.endswith(
        f"-m pytest --evalchemy-endpoint=http://h:8000/v1/completions "
        f"--evalchemy-config={EVAL_CONFIG} --evalchemy-output={output} --evalchemy-run-id=dr1 "
        "--evalchemy-batch-size=2 -k arc"
    )


def test_dry_run_with_model_and_max_length(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--dry-run", "--config", str(OFFLINE_CONFIG), "--output", str(tmp_path / "o")]
    args += ["--model", "qwen3-8b", "--max-length", "4096"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "o").exists()
    assert out.count("lm-eval run") == 4
    assert "OPENAI_API_KEY" not in out  # no key set: nothing to mask
    assert "model=qwen3-8b" in out
    assert "max_length=4096" in out
    assert "is the default" not in out
    assert "no endpoint" in out  # a dry run needs none, a run will


def test_modes_import_no_lm_eval(tmp_path: Path) -> None:
    # In a fresh interpreter: this test session may have imported lm-eval already.
    code = (
        "import sys\n"
        "from pytest_evalchemy.cli import main\n"
        f"assert main(['--list-benchmarks', '--config', {str(EVAL_CONFIG)!r}]) == 0\n"
        f"assert main(['--validate-config', '--config', {str(EVAL_CONFIG)!r}]) == 0\n"
        f"assert main(['--dry-run', '--output', {str(tmp_path / 'o')!r}]) == 0\n"
        "assert 'lm_eval' not in sys.modules, 'lm_eval imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- through the shell script


def test_script_is_a_thin_door() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    assert os.access(SCRIPT, os.X_OK)
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "exec " in text
    assert len(text.splitlines()) < 15


@pytest.mark.parametrize(
    "door",
    [
        [str(SCRIPT)],
        [sys.executable, "-m", "pytest_evalchemy"],
        [str(Path(sys.executable).parent / "evalchemy")],
    ],
    ids=["script", "module", "console-script"],
)
def test_help(door: list[str]) -> None:
    proc = subprocess.run(
        [*door, "--help"], cwd=REPO, env=_clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for flag in (
        "--endpoint", "--batch-size", "--run-id", "--config", "--output", "--gpu", "--max-length",
        "--list-benchmarks", "--validate-config", "--dry-run", "--log-level", "--serve",
    ):  # fmt: skip
        assert flag in proc.stdout
    assert "exit codes:" in proc.stdout
    assert "  5  no item selected" in proc.stdout
    assert "arguments after -- go to pytest" in proc.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["arc_challenge", "hellaswag", "items a run would execute (3 of 5)"]),
        (("--config", "configs/offline_config.json"), ["mini_gsm8k", "600s", "(4 of 4)"]),
    ],
    ids=["eval_config", "offline_config"],
)
def test_script_list_benchmarks(args: tuple[str, ...], expected: list[str]) -> None:
    proc = script("--list-benchmarks", *args)
    assert proc.returncode == 0, proc.stderr
    for fragment in expected:
        assert fragment in proc.stdout


def test_script_validate_config(tmp_path: Path) -> None:
    for config in ("configs/eval_config.json", "configs/offline_config.json"):
        proc = script("--validate-config", "--config", config)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("config OK: 4 benchmarks, 4 tasks, ")
    comma = write(tmp_path / "comma.json", '{"tasks": {\n  "mini_arc": {"limit": 1,},\n}}')
    key = write(
        tmp_path / "key.json", {"benchmarks": {"b": {"tasks": ["mini_arc"], "enable": True}}}
    )
    name = write(
        tmp_path / "name.json", {"benchmarks": {"b": {"tasks": ["hellaswag", "helaswag"]}}}
    )
    for config, fragment in (
        (comma, "line 2, column 27: JSON syntax error"),
        (key, "benchmarks.b.enable: unknown key 'enable'"),
        (name, "benchmarks.b.tasks[1]: unknown task 'helaswag'"),
    ):
        proc = script("--validate-config", "--config", str(config))
        assert proc.returncode == cli.EXIT_USAGE_ERROR
        assert fragment in proc.stderr
        assert "config OK" not in proc.stdout


def test_script_dry_run(tmp_path: Path) -> None:
    output = tmp_path / "results"
    proc = script(
        "--dry-run", "--endpoint", "http://localhost/vllm/v1/completions", "--output", str(output),
        "--run-id", "dry", "--log-level", "DEBUG", "--", "-k", "arc",
        OPENAI_API_KEY=SECRET,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not output.exists()
    assert SECRET not in proc.stdout + proc.stderr
    assert proc.stdout.count("OPENAI_API_KEY=*** lm-eval run") == 3
    assert "base_url=http://localhost/vllm/v1/completions" in proc.stdout
    assert (
        proc.stdout.strip()
        .splitlines()[-1]
        .endswith("--evalchemy-run-id=dry --evalchemy-log-level=DEBUG --log-level=DEBUG -k arc")
    )


def test_script_bad_run_id(tmp_path: Path) -> None:
    proc = script(
        "--endpoint", "http://127.0.0.1:9/v1", "--output", str(tmp_path), "--run-id", "a/b"
    )
    assert proc.returncode == cli.EXIT_USAGE_ERROR
    assert "--run-id: run id 'a/b' is not a safe folder name" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_script_without_endpoint() -> None:
    proc = script("--config", "configs/offline_config.json")
    assert proc.returncode == cli.EXIT_USAGE_ERROR
    assert "pass --endpoint URL" in proc.stderr


# ---------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's test server, as a user would start it: from a folder of their own, with
    the answer key of the benchmarks the package ships (no --benchmarks)."""
    proc = spawn(
        [sys.executable, "-m", "pytest_evalchemy.testing.server"],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith(READY_PREFIX), f"test server did not start: {line!r}"
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _run(
    url: str, output: Path, run_id: str, *pytest_args: str
) -> subprocess.CompletedProcess[str]:
    return script(
        "--endpoint", f"{url}/v1/completions", "--config", "configs/offline_config.json",
        "--output", str(output), "--run-id", run_id, "--", "-k", "mini_arc", *pytest_args,
    )  # fmt: skip


def test_run_end_to_end(server_url: str, tmp_path: Path) -> None:
    proc = _run(server_url, tmp_path, "cli_run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"evalchemy: run cli_run, results in {tmp_path / 'cli_run'}" in proc.stdout
    summary = json.loads((tmp_path / "cli_run" / "evalchemy_summary_cli_run.json").read_text())
    record = summary["tasks"]["mini_arc/mini_arc"]
    assert record["status"] == "passed"
    limit = load_config(OFFLINE_CONFIG).task("mini_arc").limit
    expected = expected_accuracy(load_answer_key(REPO / "benchmarks"), "mini_arc", limit)
    assert expected == 0.75
    assert record["metrics"]["mini_arc"]["acc,none"] == pytest.approx(expected)
    assert summary["run_id"] == "cli_run"
    assert summary["totals"]["passed"] == 1


def test_run_below_threshold_exits_1(server_url: str, tmp_path: Path) -> None:
    proc = _run(server_url, tmp_path, "gate", "--evalchemy-threshold=mini_arc:acc>=0.9")
    assert proc.returncode == cli.EXIT_TESTS_FAILED, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "gate" / "evalchemy_summary_gate.json").read_text())
    assert summary["tasks"]["mini_arc/mini_arc"]["status"] == "failed"
    assert summary["exit_status"] == cli.EXIT_TESTS_FAILED
