"""Timed lm-eval work in a fresh process: the measuring side of ``run_perf.py``. Each
subcommand prints one JSON line.

``run``: one ``simple_evaluate`` the way the plugin's harness calls it, with the wall time of
the run, of its model phase (tokenization and requests: what the ideal time is about), of the
imports, the peak RSS and the metrics. ``--model`` picks the lm-eval model: ``plain``
(lm-eval's ``local-completions``: the remote tokenizer called one string at a time),
``evalchemy`` (the plugin's: concurrent remote tokenizer) or ``local`` (the reference: the
test server's byte tokenizer run in this process, no tokenizer request at all).

``resolve``: the time to build a TaskManager that knows some public tasks: ``fast`` (the
plugin's, from its cached index), ``default`` (lm-eval's ``TaskManager()``); with
``--compare``, whether both give identical task configs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _local_tokenizer_model() -> Any:
    """``local-completions`` whose tokenizer is the test server's own, in process."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from pytest_evalchemy.testing.server import decode, encode

    class LocalTokenizerCompletions(LocalCompletionsAPI):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Same ids as the server's /tokenize (add_special_tokens false), without the call.
            self.tokenizer.encode = encode
            self.tokenizer.decode = decode

    return LocalTokenizerCompletions


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Build a TaskManager that knows ``args.names``, timed after lm-eval is imported."""
    t0 = time.perf_counter()
    from lm_eval.tasks import TaskManager

    from pytest_evalchemy.run.lmeval import task_index

    imported = time.perf_counter() - t0
    cached = task_index.index_path(task_index._tasks_root(None), args.cache).exists()
    start = time.perf_counter()
    if args.mode == "fast":
        tm = task_index.task_manager(args.names, cache=args.cache)
    else:
        tm = TaskManager()
    out: dict[str, Any] = {
        "build_s": time.perf_counter() - start,
        "import_s": imported,
        "index_cached": cached,
        "names": len(tm.all_tasks),
    }
    if args.compare:
        from pytest_evalchemy.testing.task_configs import config_snapshot

        fast = task_index.task_manager(args.names, cache=args.cache)
        out["identical"] = {
            n: config_snapshot(fast, [n]) == config_snapshot(tm, [n]) for n in args.names
        }
        out["n_tasks"] = {n: len(config_snapshot(fast, [n])["tasks"]) for n in args.names}
    return out


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser()
    sub = top.add_subparsers(dest="command", required=True)
    r = sub.add_parser("resolve")
    r.add_argument("--names", nargs="+", required=True)
    r.add_argument("--mode", choices=("fast", "default"), required=True)
    r.add_argument("--cache", type=Path, help="folder of the task index (default: the user's)")
    r.add_argument("--compare", action="store_true")
    p = sub.add_parser("run")
    p.add_argument("--url", required=True, help="the completions URL")
    p.add_argument("--model-name", default="evalchemy-test-model")
    p.add_argument("--task", action="append", required=True)
    p.add_argument("--include", action="append", default=[], type=Path)
    p.add_argument("--model", choices=("plain", "evalchemy", "local"), default="evalchemy")
    p.add_argument("--concurrency", default="1", help="a number, or auto (the plugin's default)")
    p.add_argument("--max-concurrency", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--limit", type=float)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--tokenizer", help="a local Hugging Face tokenizer folder instead of /tokenize")
    args = top.parse_args(argv)
    if args.command == "resolve":
        out = resolve(args)
        out["load"] = os.getloadavg()[0]
        print(json.dumps(out))
        return 0

    t0 = time.perf_counter()
    import lm_eval
    from lm_eval.api.registry import get_model

    from pytest_evalchemy.run import concurrency
    from pytest_evalchemy.run.lmeval import harness

    imported = time.perf_counter() - t0
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    adaptive = concurrency.parse_concurrency(args.concurrency) == concurrency.AUTO
    request = harness.ItemRequest(
        tasks=tuple(args.task),
        model=args.model_name,
        base_url=args.url,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        limit=limit,
        max_length=args.max_length,
        num_concurrent=args.max_concurrency if adaptive else int(args.concurrency),
        adaptive_concurrency=adaptive,
        include_paths=tuple(p.absolute() for p in args.include),
        tokenizer=args.tokenizer,
    )
    if args.model == "local":
        cls = _local_tokenizer_model()
    else:
        from pytest_evalchemy.run.lmeval import completions_model

        name = completions_model.MODEL_NAME if args.model == "evalchemy" else "local-completions"
        cls = get_model(name)
    start = time.perf_counter()
    tm = harness.task_manager(request.include_paths, request.tasks)
    model_args = request.model_args()
    extra: dict[str, Any] = {"batch_size": request.batch_size}
    limits = concurrency.LimitRegistry()
    if args.model == "evalchemy":
        # The plugin's model takes its policy (the adaptive limit) as a constructor argument.
        from pytest_evalchemy.run.lmeval.policy import ModelPolicy

        limit = limits.get(args.url, request.num_concurrent) if adaptive else None
        extra["policy"] = ModelPolicy(limit=limit)
    lm = cls.create_from_arg_obj(model_args, extra)
    phase = [0.0]

    def timed(method: Any) -> Any:
        @functools.wraps(method)
        def run(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                phase[0] += time.perf_counter() - t

        return run

    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        setattr(lm, name, timed(getattr(lm, name)))
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(request.tasks),
        num_fewshot=request.num_fewshot,
        batch_size=request.batch_size,
        limit=request.limit,
        task_manager=tm,
        **harness.SEEDS,
    )
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "wall_s": wall,
                "phase_s": phase[0],
                "import_s": imported,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "metrics": harness.metrics_of(results),
                "load": os.getloadavg()[0],
                "limit": (limits.existing(args.url) or {}) and limits.existing(args.url).snapshot(),  # type: ignore[union-attr]
            },
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
