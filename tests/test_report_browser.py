"""The HTML reports in a real headless browser (Debian's chromium through selenium), with the
network off: the pages must show every item with the summary's values, filter the samples,
and log no error.

``EVALCHEMY_SCREENSHOTS=docs`` saves the screenshots the README shows (docs/report.png,
docs/compare.png)."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.cli import main as cli_main
from pytest_evalchemy.judge.gating import drop_p_value
from pytest_evalchemy.testing.answer_key import load_answer_key
from pytest_evalchemy.testing.server import EvalchemyTestServer

from .helpers import REPO, offline_task, write_config

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = os.environ.get("EVALCHEMY_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless chromium. Missing, the tests fail with the reason: CI must not pass them
    without having looked at a page."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} "
            "not found): apt-get install -y chromium chromium-driver (.ci/run does)",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(
            "selenium is not installed: pip install --group test -e . (or 'pytest-evalchemy[browser]')",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1280,1000",
        # The network off: any http(s) fetch goes to a proxy nobody listens on and fails,
        # which the console would report.
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: Any, page: Path) -> None:
    driver.get(page.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def _problems(driver: Any) -> list[dict[str, Any]]:
    """Console messages at warning level or above (CSP violations and failed loads too)."""
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def _assert_offline(driver: Any, page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    external = re.findall(r'(?:src|href)\s*=\s*"((?:https?:)?//[^"]*)"', text)
    assert external == [], external
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
    )
    assert all(url.startswith(("file:", "data:")) for url in loaded), loaded


def _screenshot(driver: Any, name: str) -> None:
    """The whole page (up to 2600 px high) from the top, whatever is scrolled into view."""
    if not SHOTS:
        return
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 2600), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    target = Path(SHOTS) if os.path.isabs(SHOTS) else REPO / SHOTS
    target.mkdir(parents=True, exist_ok=True)
    (target / name).write_bytes(base64.b64decode(shot["data"]))


def _visible_samples(driver: Any) -> list[list[str]]:
    return driver.execute_script(
        "return Array.prototype.slice.call(document.querySelectorAll('#samples .sample'))"
        ".filter(function (e) { return e.getClientRects().length > 0; })"
        ".map(function (e) { return [e.dataset.task, e.dataset.outcome]; })"
    )


def _select(driver: Any, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def _metrics(record: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    out = {}
    for lm_task, values in record["metrics"].items():
        for metric, value in values.items():
            name, _, flt = metric.partition(",")
            if not name.endswith("_stderr"):
                out[f"{lm_task}:{metric}"] = (value, values.get(f"{name}_stderr,{flt}"))
    return out


def test_run_report(pytester: pytest.Pytester, server: EvalchemyTestServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    tasks = {
        "mini_arc": offline_task("mini_arc", log_samples=True, thresholds={"acc": {"min": 0.5}}),
        "mini_gsm8k": offline_task("mini_gsm8k", limit=4, log_samples=True),
        "mini_mmlu": offline_task("mini_mmlu", limit=4, thresholds={"acc": {"min": 0.9}}),
    }
    config = write_config(pytester.path / "eval.json", {"tasks": tasks})
    pytester.makepyfile(
        test_user="""
        def test_hellaswag(evalchemy):
            assert evalchemy.run("mini_hellaswag", limit=4).metric("acc") > 0.5
        """
    )
    result = pytester.runpytest(
        f"--evalchemy-endpoint={server.completions_url}",
        f"--evalchemy-config={config}",
        "--evalchemy-run-id=shown",
        "test_user.py",
    )
    result.assert_outcomes(passed=3, failed=1)
    run = pytester.path / "results" / "shown"
    summary = json.loads((run / "evalchemy_summary_shown.json").read_text())
    page = run / "report.html"

    _open(browser, page)
    assert _problems(browser) == []
    _assert_offline(browser, page)
    header = browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    for fact in (summary["model"], summary["endpoint"], summary["config"]["sha256"]):
        assert fact in header
    # Every item, every metric, with the summary's values.
    assert set(summary["tasks"]) == {
        "mini_arc/mini_arc",
        "mini_gsm8k/mini_gsm8k",
        "mini_mmlu/mini_mmlu",
        "test_hellaswag/mini_hellaswag",
    }
    shown = 0
    for key, record in summary["tasks"].items():
        rows = browser.find_elements(By.CSS_SELECTOR, f'#items tr[data-key="{key}"]')
        expected = _metrics(record)
        assert {r.get_attribute("data-metric") for r in rows} == set(expected), key
        assert rows[0].find_element(By.CSS_SELECTOR, "td.status").text == record["status"]
        for row in rows:
            value, stderr = expected[row.get_attribute("data-metric")]
            assert row.find_element(By.CSS_SELECTOR, ".value").text == f"{value:.4f}"
            assert row.find_element(By.CSS_SELECTOR, ".stderr").text == f"{stderr:.4f}"
        shown += len(expected)
    mmlu = browser.find_element(By.CSS_SELECTOR, '#items tr[data-key="mini_mmlu/mini_mmlu"]').text
    assert "threshold >= 0.9: FAIL" in mmlu
    assert len(browser.find_elements(By.CSS_SELECTOR, "#scores .estimate")) == shown
    links = {a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")}
    assert (run / "items/mini_arc/mini_arc/lm_eval.log").as_uri() in links
    assert (run / "mini_arc_results.json").as_uri() in links

    # The sample browser: everything logged, then filtered by task and by outcome.
    logged: dict[str, list[dict[str, Any]]] = {}
    for name in ("mini_arc", "mini_gsm8k"):
        path = run / "items" / name / name / f"samples_{name}.jsonl"
        logged[f"{name}/{name}"] = [json.loads(line) for line in path.read_text().splitlines()]
    total = sum(len(rows) for rows in logged.values())
    assert len(_visible_samples(browser)) == total
    assert browser.find_element(By.ID, "sample-count").text == f"{total} of {total} samples shown"
    _select(browser, "sample-task", "mini_gsm8k/mini_gsm8k")
    visible = _visible_samples(browser)
    assert len(visible) == len(logged["mini_gsm8k/mini_gsm8k"])
    assert {task for task, _ in visible} == {"mini_gsm8k/mini_gsm8k"}
    _select(browser, "sample-outcome", "wrong")
    wrong = [r for r in logged["mini_gsm8k/mini_gsm8k"] if r["exact_match"] == 0]
    assert wrong  # the simulated model misses every fourth document
    assert _visible_samples(browser) == [["mini_gsm8k/mini_gsm8k", "wrong"]] * len(wrong)
    _select(browser, "sample-task", "")
    all_wrong = sum(
        r.get("acc", r.get("exact_match")) == 0 for rows in logged.values() for r in rows
    )
    assert len(_visible_samples(browser)) == all_wrong
    # A wrong multiple-choice answer shows the model's choice apart from the target.
    card = browser.find_element(
        By.CSS_SELECTOR, '#samples .sample[data-task="mini_arc/mini_arc"][data-outcome="wrong"]'
    )
    assert card.find_element(By.CSS_SELECTOR, "li.chosen").text
    assert card.find_element(By.CSS_SELECTOR, "code.answer").text != (
        card.find_element(By.CSS_SELECTOR, "code.target").text
    )
    assert _problems(browser) == []
    _screenshot(browser, "report.png")


def test_comparison_of_three_runs(pytester: pytest.Pytester, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    config = write_config(
        pytester.path / "eval.json",
        {
            "tasks": {
                "mini_arc": offline_task("mini_arc", limit=24),
                "mini_hellaswag": offline_task("mini_hellaswag", limit=24),
            }
        },
    )
    # Three "models": the usual one (3 of 4 right), one that knows everything, one that
    # knows every other document.
    models = {
        "model-a": lambda task, i: i % 4 != 3,
        "model-b": lambda task, i: True,
        "model-c": lambda task, i: i % 2 == 0,
    }
    runs = []
    for model, known in models.items():
        key = load_answer_key(REPO / "benchmarks", known)
        with EvalchemyTestServer(key, model=model) as srv:
            result = pytester.runpytest(
                f"--evalchemy-endpoint={srv.completions_url}",
                f"--evalchemy-config={config}",
                f"--evalchemy-run-id=run-{model}",
            )
        result.assert_outcomes(passed=2)
        runs.append(pytester.path / "results" / f"run-{model}")
    out = pytester.path / "compare.html"
    assert cli_main(["report", *map(str, runs), "--out", str(out)]) == 0

    _open(browser, out)
    assert _problems(browser) == []
    _assert_offline(browser, out)
    summaries = [json.loads(next(run.glob("evalchemy_summary_*.json")).read_text()) for run in runs]
    ids = [
        r.get_attribute("data-run")
        for r in browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")
    ]
    assert ids == ["run-model-a", "run-model-b", "run-model-c"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#metrics tr[data-key]")
    per_run = [
        {f"{k}|{m}": v for k, rec in s["tasks"].items() for m, v in _metrics(rec).items()}
        for s in summaries
    ]
    assert {f"{r.get_attribute('data-key')}|{r.get_attribute('data-metric')}" for r in rows} == set(
        per_run[0]
    )
    significant = 0
    for row in rows:
        ident = f"{row.get_attribute('data-key')}|{row.get_attribute('data-metric')}"
        cells = row.find_elements(By.CSS_SELECTOR, "td.num")
        for i, cell in enumerate(cells):
            value, stderr = per_run[i][ident]
            assert cell.find_element(By.CSS_SELECTOR, ".value").text == f"{value:.4f}"
            if i == 0:
                continue
            # The delta against the previous run, judged as the gate's z-test would.
            ref, ref_stderr = per_run[i - 1][ident]
            p = min(1.0, 2 * drop_p_value(abs(value - ref), stderr, ref_stderr))
            delta = cell.find_element(By.CSS_SELECTOR, ".delta")
            assert f"Δ {value - ref:+.4f}" in delta.text
            assert delta.get_attribute("data-significant") == str(p < 0.05).lower()
            significant += p < 0.05
    # 0.75 -> 1.0 -> 0.5 on 24 documents: every change is far outside the noise.
    assert significant == 2 * len(rows)
    charts = browser.find_elements(By.CSS_SELECTOR, "#trends svg")
    assert len(charts) == len(rows)
    assert all(len(c.find_elements(By.CSS_SELECTOR, "circle.point")) == 3 for c in charts)
    _screenshot(browser, "compare.png")

    # --history orders the same runs by their start times.
    assert cli_main(["report", "--history", str(pytester.path / "results")]) == 0
    _open(browser, pytester.path / "results" / "compare.html")
    ids = [
        r.get_attribute("data-run")
        for r in browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")
    ]
    assert ids == ["run-model-a", "run-model-b", "run-model-c"]
    assert _problems(browser) == []


def _visible_flips(driver: Any) -> list[list[str]]:
    return driver.execute_script(
        "return Array.prototype.slice.call(document.querySelectorAll('#flips tr.flip'))"
        ".filter(function (e) { return e.getClientRects().length > 0; })"
        ".map(function (e) { return [e.dataset.doc, e.dataset.direction]; })"
    )


def test_flips_view_of_a_run_gated_against_its_baseline(
    pytester: pytest.Pytester, server: EvalchemyTestServer, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    config = write_config(
        pytester.path / "eval.json",
        {"tasks": {"mini_arc": offline_task("mini_arc", limit=24, metrics=["acc"])}},
    )

    def run(endpoint: str, run_id: str, *args: str) -> None:
        pytester.runpytest(
            f"--evalchemy-endpoint={endpoint}",
            f"--evalchemy-config={config}",
            f"--evalchemy-run-id={run_id}",
            "-p",
            "no:cacheprovider",
            *args,
        )

    run(server.completions_url, "base", "--evalchemy-log-samples")
    key = load_answer_key(REPO / "benchmarks")
    # Docs 0, 1, 2 were right and are now wrong; doc 3 was wrong and is now right.
    with EvalchemyTestServer(key, flip=["mini_arc:0,mini_arc:1,mini_arc:2,mini_arc:3"]) as other:
        run(other.completions_url, "new", f"--evalchemy-baseline={pytester.path / 'results/base'}")
    page = pytester.path / "results" / "new" / "report.html"
    _open(browser, page)
    assert _problems(browser) == []
    _assert_offline(browser, page)
    counts = browser.find_element(
        By.CSS_SELECTOR, '#flip-counts tr[data-metric="mini_arc/mini_arc acc,none"]'
    )
    assert counts.find_element(By.CSS_SELECTOR, ".right-to-wrong").text == "3"
    assert counts.find_element(By.CSS_SELECTOR, ".wrong-to-right").text == "1"
    assert "mcnemar-exact p=0.312" in counts.text
    # Both metrics (acc, acc_norm) flip on the same four documents.
    assert len(_visible_flips(browser)) == 8
    _select(browser, "flip-metric", "mini_arc/mini_arc acc,none")
    assert _visible_flips(browser) == [
        ["0", "right_to_wrong"],
        ["1", "right_to_wrong"],
        ["2", "right_to_wrong"],
        ["3", "wrong_to_right"],
    ]
    _select(browser, "flip-direction", "right_to_wrong")
    assert [d for d, _ in _visible_flips(browser)] == ["0", "1", "2"]
    assert browser.find_element(By.ID, "flip-count").text == "3 of 8 flips shown"
    _select(browser, "flip-direction", "wrong_to_right")
    (row,) = [
        r for r in browser.find_elements(By.CSS_SELECTOR, "#flips tr.flip") if r.is_displayed()
    ]
    # Both answers side by side: the baseline's was wrong, this run's is the target.
    old = row.find_element(By.CSS_SELECTOR, "code.old-answer").text
    new = row.find_element(By.CSS_SELECTOR, "code.new-answer").text
    assert old != new == row.find_element(By.CSS_SELECTOR, "code.target").text
    row.find_element(By.TAG_NAME, "summary").click()
    assert "Question:" in row.find_element(By.TAG_NAME, "pre").text
    assert _problems(browser) == []
