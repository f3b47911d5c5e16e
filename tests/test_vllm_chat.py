"""Chat templates and chat endpoints against the real vLLM (CPU build) on the tiny model,
whose tokenizer carries a small chat template: the plugin's scores equal lm-eval's own
commands (the ones each item records) to the last digit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.serve import VllmServer

from .helpers import config_option, read_run_summary, run_pytest

pytestmark = [pytest.mark.vllm, pytest.mark.xdist_group("vllm")]

CHOICE = {"num_fewshot": 1, "limit": 6, "batch_size": 2}


def _pytest(root: Path, tasks: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return run_pytest(root, config_option(root, tasks), "--evalchemy-no-report", *args)


def _lm_eval_cli(record: dict[str, Any], out: Path) -> tuple[dict[str, Any], Path]:
    """The item's recorded ``lm-eval run`` command, without its response cache, run by
    lm-eval's CLI; its results and its output folder."""
    cmd = record["lm_eval_command"].split()
    i = cmd.index("--use_cache")
    del cmd[i : i + 2]
    cmd[0] = str(Path(sys.executable).parent / "lm-eval")
    cmd += ["--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    return json.loads(results_file.read_text())["results"], out


def _prompts(path: Path) -> dict[int, str]:
    """doc id -> the context of its first request, from a samples JSONL."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        args = row["arguments"]
        # lm-eval's tracker writes {"gen_args_0": {"arg_0": ...}}; its results hold lists.
        first = args["gen_args_0"]["arg_0"] if isinstance(args, dict) else args[0][0]
        out[row["doc_id"]] = first
    return out


def test_chat_templated_multiple_choice_equals_lm_eval_with_the_local_tokenizer(
    vllm_server: VllmServer, tiny_model: Path, tmp_path: Path
) -> None:
    tasks = {
        name: {"tasks": [name], **CHOICE, "apply_chat_template": True, "log_samples": True}
        for name in ("mini_arc", "mini_mmlu")
    }
    result = _pytest(
        tmp_path,
        tasks,
        f"--evalchemy-endpoint={vllm_server.completions_url}",
        "--evalchemy-run-id=tpl",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "chat template: served" in result.stdout
    records = read_run_summary(tmp_path / "results", "tpl")["tasks"]
    for name in ("mini_arc", "mini_mmlu"):
        record = records[f"{name}/{name}"]
        command = record["lm_eval_command"]
        # The command the issue names: lm-eval renders the template with the model's tokenizer.
        assert f"tokenizer_backend=huggingface tokenizer={tiny_model}" in command
        assert "--apply_chat_template" in command
        cli, out = _lm_eval_cli(record, tmp_path / f"cli-{name}")
        ours = record["metrics"][name]
        assert {k: v for k, v in cli[name].items() if k in ours} == ours, name
        print(f"{name}: plugin {ours} | lm-eval {cli[name]}")
        # The rendered prompts themselves: transformers' rendering of the local tokenizer's
        # template equals the plugin's rendering of the one /tokenizer_info serves.
        (theirs,) = out.rglob(f"samples_{name}_*.jsonl")
        mine = next((tmp_path / "results" / "tpl").rglob(f"samples_{name}.jsonl"))
        assert _prompts(mine) == _prompts(theirs)
        assert all(p.startswith("<s><|im_start|>system\n") for p in _prompts(mine).values())
    # Without the template the same tasks score differently (the prompts differ).
    plain = {name: {"tasks": [name], **CHOICE} for name in ("mini_arc", "mini_mmlu")}
    result = _pytest(
        tmp_path,
        plain,
        f"--evalchemy-endpoint={vllm_server.completions_url}",
        "--evalchemy-run-id=plain",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    plain_records = read_run_summary(tmp_path / "results", "plain")["tasks"]
    print({k: v["metrics"] for k, v in plain_records.items()})


def test_generation_through_chat_completions_equals_local_chat_completions(
    vllm_server: VllmServer, tmp_path: Path
) -> None:
    chat_url = vllm_server.completions_url.replace("/v1/completions", "/v1/chat/completions")
    tasks = {
        "mini_gsm8k": {
            "tasks": ["mini_gsm8k"],
            "num_fewshot": 1,
            "limit": 3,
            "log_samples": True,
            "gen_kwargs": {"max_gen_toks": 32},
            # A random model talks until max_gen_toks: its answers are taken as they are.
            "max_invalid_share": 1,
        }
    }
    result = _pytest(tmp_path, tasks, f"--evalchemy-endpoint={chat_url}", "--evalchemy-run-id=chat")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "generation tasks through /v1/chat/completions" in result.stdout
    record = read_run_summary(tmp_path / "results", "chat")["tasks"]["mini_gsm8k/mini_gsm8k"]
    assert record["lm_eval_command"].startswith("lm-eval run --model local-chat-completions")
    cli, out = _lm_eval_cli(record, tmp_path / "cli")
    ours = record["metrics"]["mini_gsm8k"]
    assert {k: v for k, v in cli["mini_gsm8k"].items() if k in ours} == ours
    print(f"mini_gsm8k via chat: plugin {ours} | lm-eval {cli['mini_gsm8k']}")
    # The generations themselves, document by document.
    (cli_samples,) = out.rglob("samples_mini_gsm8k_*.jsonl")
    ours_samples = next((tmp_path / "results" / "chat").rglob("samples_mini_gsm8k.jsonl"))

    def generations(path: Path) -> dict[tuple[int, str], Any]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return {(r["doc_id"], r["filter"]): r["resps"] for r in rows}

    theirs, mine = generations(cli_samples), generations(ours_samples)
    assert mine == theirs
    assert any(resp[0][0] for resp in mine.values())  # the model did generate text
