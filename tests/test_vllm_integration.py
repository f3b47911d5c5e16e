"""The plugin against the real vLLM (CPU build) on the tiny model: every offline benchmark,
equality with lm-eval's own CLI, parallel equals serial, and --evalchemy-serve cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.serve import VllmServer

from .helpers import (
    REPO,
    VLLM_TASKS,
    read_run_summary,
    run_metrics,
    run_pytest,
    vllm_pids_on_port,
    write_config,
)

pytestmark = [pytest.mark.vllm, pytest.mark.xdist_group("vllm")]


@pytest.fixture(scope="module")
def serial_run(
    vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pytest.RunResult]:
    """One serial plugin run over every offline benchmark (shared by the tests below)."""
    root = tmp_path_factory.mktemp("serial")
    write_config(root / "eval.json", {"tasks": VLLM_TASKS})
    result = _pytest(
        root, f"--evalchemy-endpoint={vllm_server.completions_url}", "--evalchemy-run-id=serial"
    )
    return root, result


def _pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_pytest(root, f"--evalchemy-config={root / 'eval.json'}", *args)


def test_every_offline_benchmark_passes(serial_run: tuple[Path, Any]) -> None:
    root, result = serial_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 passed" in result.stdout
    summary = read_run_summary(root / "results", "serial")
    assert summary["totals"]["passed"] == 4
    assert summary["model"].endswith("tiny-llama")
    for key, record in summary["tasks"].items():
        task = record["task"]
        assert record["n_samples"][task]["effective"] == VLLM_TASKS[task]["limit"], key
        assert record["metrics"][task], key


def test_metrics_equal_lm_eval_cli(serial_run: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = serial_run
    record = read_run_summary(root / "results", "serial")["tasks"]["mini_arc/mini_arc"]
    cmd = record["lm_eval_command"].split()
    # The same command without the item's request cache, so the CLI asks the server itself.
    i = cmd.index("--use_cache")
    del cmd[i : i + 2]
    cmd[0] = str(Path(sys.executable).parent / "lm-eval")
    cmd += ["--output_path", str(tmp_path / "cli")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "cli").rglob("results_*.json")
    cli = json.loads(results_file.read_text())["results"]["mini_arc"]
    ours = record["metrics"]["mini_arc"]
    assert {k: v for k, v in cli.items() if k in ours} == ours


def test_generation_honours_stop_strings(serial_run: tuple[Path, Any]) -> None:
    root, _ = serial_run
    samples = (
        root
        / "results"
        / "serial"
        / "items"
        / "mini_gsm8k"
        / "mini_gsm8k"
        / "samples_mini_gsm8k.jsonl"
    )
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert rows
    for row in rows:
        (generation,) = row["resps"][0]
        assert "Question:" not in generation


def test_parallel_equals_serial(serial_run: tuple[Path, Any], vllm_server: VllmServer) -> None:
    root, _ = serial_run
    result = _pytest(
        root,
        f"--evalchemy-endpoint={vllm_server.completions_url}",
        "--evalchemy-run-id=par",
        "-n",
        "2",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert run_metrics(root / "results", "par") == run_metrics(root / "results", "serial")


def test_serve_starts_one_server_and_leaves_nothing(
    tiny_model: Path, vllm_python: str, tmp_path: Path
) -> None:
    write_config(
        tmp_path / "eval.json",
        {"tasks": {"mini_mmlu": VLLM_TASKS["mini_mmlu"], "mini_arc": VLLM_TASKS["mini_arc"]}},
    )
    result = _pytest(
        tmp_path,
        f"--evalchemy-serve={tiny_model}",
        f"--evalchemy-vllm-python={vllm_python}",
        "--evalchemy-run-id=served",
        "-n",
        "2",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    log = tmp_path / "results" / "served" / "vllm_server.log"
    first = log.read_text().splitlines()[0]
    assert first.startswith("$ ")
    assert "--enable-tokenizer-info-endpoint" in first
    port = first.split("--port ")[1].split()[0]
    assert vllm_pids_on_port(port) == []
    # One server for the run, not one per worker.
    assert result.stdout.count("starting vLLM on") == 1
    summary = read_run_summary(tmp_path / "results", "served")
    assert summary["totals"]["passed"] == 2
    assert summary["endpoint"] == f"http://127.0.0.1:{port}/v1/completions"


def test_serve_failure_is_reported_with_the_log(vllm_python: str, tmp_path: Path) -> None:
    write_config(tmp_path / "eval.json", {"tasks": {"mini_arc": VLLM_TASKS["mini_arc"]}})
    result = _pytest(
        tmp_path,
        f"--evalchemy-serve={tmp_path / 'missing-model'}",
        f"--evalchemy-vllm-python={vllm_python}",
    )
    assert result.returncode == 4
    assert "the vLLM server did not start" in result.stderr
    assert (tmp_path / "results").is_dir()


def test_local_tokenizer_gives_the_same_scores(
    serial_run: tuple[Path, Any], vllm_server: VllmServer, tiny_model: Path
) -> None:
    root, _ = serial_run
    result = _pytest(
        root,
        f"--evalchemy-endpoint={vllm_server.completions_url}",
        f"--evalchemy-tokenizer={tiny_model}",
        "--evalchemy-run-id=localtok",
        "-k",
        "mini_arc or mini_mmlu",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    results = root / "results"
    local, remote = read_run_summary(results, "localtok"), read_run_summary(results, "serial")
    assert local["settings"]["tokenizer"] == str(tiny_model)
    for key in ("mini_arc/mini_arc", "mini_mmlu/mini_mmlu"):
        assert local["tasks"][key]["metrics"] == remote["tasks"][key]["metrics"], key


# ---------------------------------------------------------------- the BOS against lm-eval's hf


BOS_TASK = {"mini_arc": {**VLLM_TASKS["mini_arc"], "batch_size": 1, "log_samples": True}}


def _loglikelihoods(folder: Path) -> dict[tuple[int, int], float]:
    """``{(doc_id, choice): loglikelihood}`` of the mini_arc samples file under ``folder``."""
    (path,) = folder.rglob("samples_mini_arc*.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {
        (row["doc_id"], i): float(resp[0])
        for row in rows
        for i, resp in enumerate(row["filtered_resps"])
    }


def _hf(vllm_python: str, tiny_model: Path, out: Path, *extra: str, args: str = "") -> Path:
    """lm-eval's own hf backend on the tiny model's weights, in the vLLM environment (its torch
    and transformers): the reference for what the model should see."""
    cmd = [
        vllm_python, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={tiny_model},dtype=float32{args}", "--device", "cpu",
        "--tasks", "mini_arc", "--include_path", str(REPO / "benchmarks"),
        "--num_fewshot", "1", "--limit", str(BOS_TASK["mini_arc"]["limit"]),
        "--batch_size", "1", "--log_samples", "--output_path", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _largest_difference(ours: dict[Any, float], theirs: dict[Any, float]) -> float:
    assert ours
    assert ours.keys() == theirs.keys()
    return max(abs(ours[k] - theirs[k]) for k in ours)


@pytest.mark.parametrize(
    ("setting", "hf_args", "hf_extra"),
    [
        pytest.param({}, "", (), id="auto-equals-hf-defaults"),
        pytest.param(
            {"add_bos_token": False}, ",add_bos_token=False", (), id="false-equals-hf-false"
        ),
        pytest.param(
            {"apply_chat_template": True}, "", ("--apply_chat_template",), id="template-one-bos"
        ),
    ],
)
def test_per_sample_loglikelihoods_equal_lm_eval_hf(
    vllm_server: VllmServer,
    vllm_python: str,
    tiny_model: Path,
    tmp_path: Path,
    setting: dict[str, Any],
    hf_args: str,
    hf_extra: tuple[str, ...],
) -> None:
    """The tiny Llama's tokenizer adds ``<s>`` to a text: auto sends it, as the hf backend's
    defaults do; its chat template writes ``{{ bos_token }}``: the prompt carries exactly that
    one (a second would change every loglikelihood)."""
    tasks = {"mini_arc": {**BOS_TASK["mini_arc"], **setting}}
    write_config(tmp_path / "eval.json", {"tasks": tasks})
    result = _pytest(tmp_path, f"--evalchemy-endpoint={vllm_server.completions_url}")
    assert result.returncode == 0, result.stdout[-3000:]
    ours = _loglikelihoods(tmp_path / "results")
    theirs = _loglikelihoods(_hf(vllm_python, tiny_model, tmp_path / "hf", *hf_extra, args=hf_args))
    largest = _largest_difference(ours, theirs)
    print(f"largest per-sample difference from lm-eval's hf backend: {largest:.2e}")
    assert largest <= 1e-4
    if not setting:
        # What the plugin sent before (no BOS on token prompts) is far from the hf defaults.
        write_config(
            tmp_path / "eval.json",
            {"tasks": {"mini_arc": {**tasks["mini_arc"], "add_bos_token": False}}},
        )
        result = _pytest(
            tmp_path,
            f"--evalchemy-endpoint={vllm_server.completions_url}",
            "--evalchemy-run-id=nobos",
        )
        assert result.returncode == 0, result.stdout[-3000:]
        without = _loglikelihoods(tmp_path / "results" / "nobos")
        print(f"without the BOS: {_largest_difference(without, theirs):.2e}")
        assert _largest_difference(without, theirs) > 1e-2
