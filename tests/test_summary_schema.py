"""The summary's vocabulary: one definition of the statuses and the metric keys, one loader,
and a JSON Schema (``configs/summary.schema.json``) that the real summaries of the plugin's
runs are checked against (test_plugin, test_pairing_plugin, test_run_integrity)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_evalchemy.core.errors import UsageProblem
from pytest_evalchemy.core.record import (
    FORMAT_VERSION,
    STATUSES,
    Status,
    load_summary,
    metric_entries,
    split_metric,
    stderr_key,
    totals,
)
from pytest_evalchemy.core.resources import summary_schema_path

from .helpers import check_summary

SUMMARY: dict[str, Any] = {
    "format_version": FORMAT_VERSION,
    "run_id": "r1",
    "started_at": "2026-12-01T10:00:00+00:00",
    "finished_at": None,
    "exit_status": None,
    "versions": {"python": "3.11", "pytest": "8", "lm_eval": "0.4", "pytest_evalchemy": "0.1"},
    "totals": dict.fromkeys(STATUSES, 0) | {"passed": 1},
    "tasks": {
        "b/t": {
            "benchmark": "b",
            "task": "t",
            "status": "passed",
            "duration_s": 1.5,
            "metrics": {"t": {"acc,none": 0.5, "acc_stderr,none": "N/A"}},
        }
    },
}


def test_the_schema_lists_the_statuses_of_the_record_module() -> None:
    schema = json.loads(summary_schema_path().read_text(encoding="utf-8"))
    assert schema["$defs"]["status"]["enum"] == [*STATUSES, Status.RUNNING]
    assert schema["properties"]["totals"]["required"] == list(STATUSES)
    assert schema["properties"]["format_version"]["const"] == FORMAT_VERSION


def test_the_schema_accepts_a_summary() -> None:
    check_summary(SUMMARY)


BROKEN = {
    "unknown status": lambda s: s["tasks"]["b/t"].update(status="flaky"),
    "no format_version": lambda s: s.pop("format_version"),
    "a status missing from totals": lambda s: s["totals"].pop("pending"),
    "an item without metrics": lambda s: s["tasks"]["b/t"].pop("metrics"),
}


@pytest.mark.parametrize("breaks", BROKEN.values(), ids=BROKEN.keys())
def test_the_schema_refuses_what_breaks_a_summary(breaks: Any) -> None:
    summary = copy.deepcopy(SUMMARY)
    breaks(summary)
    with pytest.raises(jsonschema.ValidationError):
        check_summary(summary)


def test_totals_count_every_status_in_order() -> None:
    tasks = {"a": {"status": "failed"}, "b": {"status": "pending"}, "c": {"status": "failed"}}
    assert list(totals(tasks)) == list(STATUSES)
    assert totals(tasks)["failed"] == 2
    assert totals(tasks)["pending"] == 1


def test_metric_keys_and_rows() -> None:
    assert stderr_key("exact_match,strict-match") == "exact_match_stderr,strict-match"
    assert split_metric("acc,none") == ("acc", "none")
    record = {
        "task": "grp",
        "metrics": {
            "grp": {"acc,none": 0.5, "acc_stderr,none": 0.1},
            "sub": {"acc,none": 1, "acc_stderr,none": "N/A"},
        },
    }
    rows = [(m.label, m.value, m.stderr, m.raw_stderr) for m in metric_entries(record)]
    assert rows == [("acc,none", 0.5, 0.1, 0.1), ("sub:acc,none", 1.0, None, "N/A")]


def test_load_summary_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "evalchemy_summary_x.json"
    with pytest.raises(FileNotFoundError):
        load_summary(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(UsageProblem, match=r"^--flag: cannot read '.*evalchemy_summary_x.json': "):
        load_summary(path, label="--flag: ")
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(UsageProblem, match=r"is not an evalchemy summary \(no 'tasks'\)$"):
        load_summary(path)
    path.write_text(json.dumps(SUMMARY), encoding="utf-8")
    assert load_summary(path) == SUMMARY
