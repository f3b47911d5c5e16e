"""A request cache that cannot be read (a disk error, a copy cut short, bytes overwritten) is
moved aside with a warning naming the file, and the resumed item asks again: it passes with
the scores of a clean run, where it used to fail every resume with sqlite's ``database disk
image is malformed``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import check_summary, config_option, offline_task, run_evalchemy

KEY = "mini_arc/mini_arc"
TASKS = {"mini_arc": offline_task("mini_arc", limit=12, num_fewshot=0, batch_size=1)}


def _run(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return run_evalchemy(pytester, url, config_option(pytester.path, TASKS), *args)


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "garbage":
        data = bytearray(b"not a database, whatever it was" * (len(data) // 31 + 1))[: len(data)]
    else:
        # The page in the middle of the file: its b-tree header overwritten, as a bad sector
        # or a write cut short leaves it.
        page = int.from_bytes(data[16:18], "big")
        start = max(page, len(data) // 2 // page * page)
        data[start : start + 512] = b"\xff" * 512
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["middle", "garbage"])
def test_an_unreadable_cache_is_moved_aside_and_the_item_asks_again(
    pytester: pytest.Pytester, make_server: Callable[..., EvalchemyTestServer], how: str
) -> None:
    clean_server = make_server()
    clean = _run(pytester, clean_server.url, "--evalchemy-run-id=clean", "--evalchemy-no-cache")
    clean.assert_outcomes(passed=1)
    clean_metrics = read_summary_of(pytester.path, "clean")["tasks"][KEY]["metrics"]
    clean_requests = clean_server.stats()["completions"] - 1  # the endpoint check's probe
    # The first run: the server resets request 11 and the item errors there, its first
    # answers in the request cache (no waiting for the server, one attempt per request).
    broken = make_server(away_after=10)
    first = _run(
        pytester,
        broken.url,
        "--evalchemy-run-id=r",
        "--evalchemy-outage-timeout=0",
        "--evalchemy-max-retries=1",
        "--evalchemy-concurrency=1",
    )
    first.assert_outcomes(failed=1)
    assert read_summary_of(pytester.path, "r")["tasks"][KEY]["status"] == "error"
    (cache,) = (pytester.path / "results" / ".cache").rglob("requests_rank0.db")
    assert cache.stat().st_size > 0
    _corrupt(cache, how)
    server = make_server()
    resumed = _run(pytester, server.url, "--evalchemy-resume=r")
    resumed.assert_outcomes(passed=1)
    record = check_summary(read_summary_of(pytester.path, "r"))["tasks"][KEY]
    assert record["status"] == "passed"
    assert record["metrics"] == clean_metrics
    assert server.stats()["completions"] - 1 == clean_requests  # every answer asked again
    aside = cache.with_name("requests_rank0.db.corrupt-1")
    assert aside.is_file()
    warning = f"request cache {cache} cannot be read (*): moved aside to {aside.name}; *"
    resumed.stdout.fnmatch_lines([f"*RequestCacheWarning: {KEY}: {warning}"])
    log = pytester.path / "results" / "r" / "items" / "mini_arc" / "mini_arc" / "lm_eval.log"
    assert any(
        " WARNING [" in line and f"request cache {cache} cannot be read" in line
        for line in log.read_text(encoding="utf-8").splitlines()
    )
    assert record["request_cache"].startswith(f"request cache {cache} cannot be read (")


def read_summary_of(root: Path, run_id: str) -> dict:
    path = root / "results" / run_id / f"evalchemy_summary_{run_id}.json"
    return json.loads(path.read_text(encoding="utf-8"))
