"""The plugin's lm-eval model (``local-completions`` with a concurrent remote tokenizer) scores
exactly what ``local-completions`` scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.lmeval import harness
from pytest_evalchemy.testing.server import EvalchemyTestServer, encode

from .helpers import REPO

OFFLINE_TASKS = ["mini_arc", "mini_hellaswag", "mini_mmlu", "mini_gsm8k"]


def _evaluate(
    model: str, server: EvalchemyTestServer, concurrency: int, cache: Path | None = None
) -> dict[str, Any]:
    import lm_eval

    from pytest_evalchemy.run.lmeval import completions_model  # registers the model

    assert completions_model.MODEL_NAME == "evalchemy-completions"
    request = harness.ItemRequest(
        tasks=tuple(OFFLINE_TASKS),
        model=server.model,
        base_url=server.completions_url,
        num_fewshot=1,
        limit=8,
        num_concurrent=concurrency,
        include_paths=(REPO / "benchmarks",),
    )
    return lm_eval.simple_evaluate(
        model=model,
        model_args=request.model_args(),
        tasks=list(request.tasks),
        num_fewshot=request.num_fewshot,
        limit=request.limit,
        log_samples=True,
        use_cache=str(cache) if cache else None,
        task_manager=harness.task_manager(request.include_paths, request.tasks),
        **harness.SEEDS,
    )


def _responses(results: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        task: [(s["doc_id"], s["resps"], s["filtered_resps"]) for s in rows]
        for task, rows in results["samples"].items()
    }


@pytest.mark.parametrize("concurrency", [1, 4])
def test_same_scores_as_local_completions(
    make_server: Any, concurrency: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    server = make_server()
    plain = _evaluate("local-completions", server, concurrency)
    plain_calls = server.stats()["requests"]["/tokenize"]
    server.reset_stats()
    ours = _evaluate("evalchemy-completions", server, concurrency)
    assert harness.metrics_of(ours) == harness.metrics_of(plain)
    assert _responses(ours) == _responses(plain)
    assert ours["results"]["mini_arc"]["acc,none"] == pytest.approx(
        plain["results"]["mini_arc"]["acc,none"]
    )
    # A context shared by the choices of a question is tokenized once, not per choice.
    assert server.stats()["requests"]["/tokenize"] < plain_calls
    assert server.stats()["max_active"] <= concurrency  # completions: never more at once


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_request_cache_is_lm_evals_and_complete_when_the_phase_ends(
    make_server: Any, concurrency: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlitedict import SqliteDict

    monkeypatch.chdir(REPO)
    server = make_server()
    cache = tmp_path / "requests"
    first = _evaluate("evalchemy-completions", server, concurrency, cache)
    asked = server.stats()["completions"]
    # Every answer is on disk once lm-eval's phase returned: a fresh reader sees them all.
    (db_file,) = tmp_path.glob("requests*.db")
    with SqliteDict(str(db_file), flag="r") as db:
        stored = len(db)
    assert stored == asked > 0  # one entry per request asked
    # Read back by the plugin's model and by lm-eval's own: nothing asked again, same scores.
    for model in ("evalchemy-completions", "local-completions"):
        server.reset_stats()
        again = _evaluate(model, server, concurrency, cache)
        assert server.stats()["completions"] == 0, model
        assert harness.metrics_of(again) == harness.metrics_of(first)


def test_prefetching_tokenizer_answers_unannounced_and_reordered_strings(
    make_server: Any,
) -> None:
    from lm_eval.utils import RemoteTokenizer

    from pytest_evalchemy.run.lmeval.completions_model import PrefetchingTokenizer

    server = make_server()
    tok = PrefetchingTokenizer(RemoteTokenizer(server.completions_url), workers=4)
    texts = [f"text {i} " * (i % 5 + 1) for i in range(40)]
    tok.prefetch([*texts, texts[0]])  # texts[0] announced twice: read twice
    for text in [texts[0], *reversed(texts[1:]), texts[0], "never announced"]:
        assert tok.encode(text) == encode(text)
    assert tok.eos_token == "</s>"  # everything else is the remote tokenizer's
    tok.close()


@pytest.mark.parametrize(
    ("concurrency", "batch_size", "streams"), [(4, 1, True), (1, 1, True), (4, 2, False)]
)
def test_tricky_contexts_score_the_same(
    make_server: Any, concurrency: int, batch_size: int, streams: bool
) -> None:
    """An empty context (lm-eval conditions on the prefix token), trailing spaces (moved into
    the continuation), repeated contexts and continuations: the requests sent, whether they
    stream or go out the way lm-eval batches them."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from pytest_evalchemy.run.lmeval.completions_model import MODEL_NAME

    server = make_server()
    pairs = [("", "Paris"), ("The capital is ", "Paris"), ("The capital is", " Rome")]
    pairs += [(f"Question {i % 3}: x?  ", f"answer {i}") for i in range(12)]
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(pairs)
    ]
    args = {
        "model": server.model,
        "base_url": server.completions_url,
        "tokenizer_backend": "remote",
        "num_concurrent": concurrency,
        "batch_size": batch_size,
    }
    plain = get_model("local-completions")(**args)
    ours = get_model(MODEL_NAME)(**args)
    assert ours._streams() is streams
    assert ours.loglikelihood(instances) == plain.loglikelihood(instances)
