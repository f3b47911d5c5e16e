"""The record's types (``core/record.py``) and the summary's schema name the same keys: a key
the code writes and the schema leaves out (or the other way round) fails here, not in a tool
that reads summaries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_evalchemy.core.record import (
    CanaryRecord,
    EndpointCheckRecord,
    IntervalRecord,
    ItemRecord,
    Summary,
    ValidityShare,
)
from pytest_evalchemy.core.resources import summary_schema_path
from pytest_evalchemy.report.summary import assemble_summary, summary_header

from .helpers import check_summary


def _schema() -> dict[str, Any]:
    return json.loads(summary_schema_path().read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("typed", "where"),
    [
        (Summary, ()),
        (ItemRecord, ("$defs", "item")),
        (IntervalRecord, ("$defs", "interval")),
        (ValidityShare, ("$defs", "validity_share")),
        (EndpointCheckRecord, ("$defs", "endpoint_check")),
        (CanaryRecord, ("$defs", "canary")),
    ],
    ids=["summary", "item", "interval", "validity_share", "endpoint_check", "canary"],
)
def test_the_typed_record_lists_the_schemas_keys(typed: type, where: tuple[str, ...]) -> None:
    schema = _schema()
    for part in where:
        schema = schema[part]
    keys = typed.__required_keys__ | typed.__optional_keys__
    assert sorted(keys) == sorted(schema["properties"])
    assert set(schema.get("required", ())) <= keys


def test_the_summary_is_assembled_in_one_place_every_url_redacted() -> None:
    secret = "http://user:s3cretpw@{}/v1/completions?api_key=k3y"
    header = summary_header(
        run_id="r1",
        endpoint=secret.format("router:9000"),
        model="m",
        endpoints=[secret.format("a:8000"), secret.format("b:8000")],
        router=secret.format("router:9000"),
        replicas=[secret.format("a:8000"), secret.format("b:8000")],
        config_path="eval_config.json",
        config_sha256="abc",
        config_warnings=["a warning"],
        gate={"mode": "point", "confidence": 0.95, "max_drop": 0.02, "baseline": None},
        seeds={"random_seed": 0},
        settings={"limit": 8},
        endpoint_check=None,
        identity={"config_sha256": "abc"},
        resumes=[],
    )
    record: ItemRecord = {
        "benchmark": "b",
        "task": "t",
        "status": "passed",
        "duration_s": 1.0,
        "metrics": {"t": {"acc,none": 0.5}},
    }
    summary = assemble_summary(
        header,
        {"b/t": record},
        started_at="2026-12-01T10:00:00+00:00",
        finished_at=None,
        exit_status=None,
        gate_notes=["a note"],
    )
    check_summary(dict(summary))
    text = json.dumps(summary)
    assert "s3cretpw" not in text
    assert "k3y" not in text
    assert summary["endpoint"] == "http://router:9000/v1/completions"
    assert summary["replicas"] == ["http://a:8000/v1/completions", "http://b:8000/v1/completions"]
    assert list(summary)[:3] == ["format_version", "run_id", "endpoint"]
    assert summary["gate"]["notes"] == ["a note"]
    assert "notes" not in header["gate"]  # the header is not changed by a write
    assert summary["totals"]["passed"] == 1
    assert "endpoint_check" not in summary  # not checked: left out, not null
