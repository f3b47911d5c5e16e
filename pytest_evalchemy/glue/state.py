"""The per-process state of a run, kept on ``config.stash``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pytest

from ..core.config import EvalConfig, PlannedItem
from ..core.endpoint import Endpoint
from ..core.errors import UsageProblem
from ..core.record import Summary, load_summary
from ..core.redact import redact_url
from ..core.results import (
    RunPaths,
    versions,
)
from ..report.summary import summary_header
from ..run import tokenizer_check
from ..run.chat_check import endpoint_findings
from ..run.endpoint import (
    DEFAULT_MAX_LENGTH,
    EndpointInfo,
    pick_endpoint,
)
from ..run.evaluation import (
    RunSettings,
)
from ..run.identity import differences, refusal
from ..run.runlock import RunLock
from .options import Options

RECORD_PROPERTY = "evalchemy"
# The user property that carries one run of the fixture's api ({"key": ..., "record": ...}) to
# the reporter.
API_RECORD_PROPERTY = "evalchemy_run"


@dataclass
class EvalchemyState:
    """Per-process state, on ``config.stash``."""

    options: Options
    eval_config: EvalConfig
    plan: list[PlannedItem]
    run_id: str
    started_at: str
    is_worker: bool
    settings: RunSettings | None = None
    endpoints: list[EndpointInfo] = field(default_factory=list)
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)  # records of a resumed run
    previous_summary: dict[str, Any] = field(default_factory=dict)  # the resumed run's summary
    resume_entry: dict[str, Any] | None = None  # this resume, as the summary's "resumes" lists it
    worker_index: int | None = None
    lock: RunLock | None = None  # the run folder's, held by the controller (or the only process)
    # Keys of the enabled items -k and -m select (None: not decided, every enabled item).
    selected: frozenset[str] | None = None
    config_warnings: list[str] = field(default_factory=list)  # a limit above a data set's size
    config_notes: list[str] = field(default_factory=list)  # what could not be checked
    replicas: list[Endpoint] = field(default_factory=list)  # endpoints behind the router
    router: Endpoint | None = None  # the router every request goes through

    def settings_for(self, planned: PlannedItem) -> RunSettings | None:
        """The run's settings with the endpoint that serves ``planned``."""
        if self.settings is None or len(self.endpoints) < 2:
            return self.settings
        enabled = [p.key for p in self.plan if p.enabled]
        position = enabled.index(planned.key) if planned.key in enabled else 0
        return replace(
            self.settings, endpoint=pick_endpoint(self.endpoints, self.worker_index, position)
        )

    @property
    def paths(self) -> RunPaths:
        return RunPaths.create(self.options.output, self.run_id)

    def make_settings(self, endpoint: EndpointInfo) -> RunSettings:
        o = self.options
        return RunSettings(
            endpoint=endpoint,
            paths=self.paths,
            batch_size=o.batch_size,
            limit=o.limit,
            max_length=o.max_length,
            concurrency=o.concurrency,
            max_concurrency=o.max_concurrency,
            max_retries=o.max_retries,
            tokenizer=o.tokenizer,
            api_key=o.api_key,
            default_timeout=o.timeout,
            include_paths=self.eval_config.lm_eval_include_paths,
            cache_root=None if o.no_cache else o.output / ".cache",
            log_level=o.log_level,
            verify=o.verify,
            allow_unsafe_code=o.allow_unsafe_code,
            outage_timeout=o.outage_timeout,
            strict_context=o.strict_context,
            extra_thresholds=o.thresholds,
            gate=o.gate,
            # Pairing with a baseline needs this run's samples (and the baseline's).
            log_samples=o.log_samples or o.gate.baseline is not None,
            chat=o.chat,
            add_bos_token=o.add_bos_token,
        )

    def shown_endpoints(self) -> list[str]:
        """Every endpoint of the run, redacted: the replicas behind the router, else those
        checked, else those given."""
        if self.replicas:
            return [e.redacted for e in self.replicas]
        if self.endpoints:
            return [redact_url(e.url) for e in self.endpoints]
        return [e.redacted for e in self.options.endpoints]

    def hold_run_folder(self, add_cleanup: Callable[[Callable[[], None]], None]) -> None:
        """Lock the run folder for the run's whole life: a second run with the same id is
        refused at once and writes nothing. xdist workers run under the controller's lock."""
        lock = RunLock(self.paths.root, self.run_id)
        lock.acquire()
        self.lock = lock
        add_cleanup(lock.release)

    def load_previous(self) -> None:
        """Read the summary of the run being resumed (``UsageProblem`` when there is none)."""
        path = self.paths.summary
        where = f"--evalchemy-resume {self.run_id}: "
        try:
            summary = load_summary(path, label=where, shown=str(path))
        except FileNotFoundError:
            raise UsageProblem(
                f"{where}no summary at {path}; check the run id and --evalchemy-output"
            ) from None
        self.started_at = summary.get("started_at") or self.started_at
        self.previous_summary = summary
        self.previous = dict(summary.get("tasks") or {})

    def check_resume(self) -> None:
        """Refuse a resume that would complete another run than the one recorded (one line
        that names each difference) with ``UsageProblem``, unless --evalchemy-resume-force;
        then the summary records it."""
        recorded = self.previous_summary.get("identity")
        if isinstance(recorded, dict):
            found = differences(recorded, self.identity())
        else:
            found = ["the run records no identity (written by an older pytest-evalchemy)"]
        if not found:
            return
        if not self.options.resume_force:
            raise UsageProblem(f"evalchemy: {refusal(self.run_id, found)}")
        assert self.resume_entry is not None
        known = self.resume_entry["differences"]
        known.extend(f for f in found if f not in known)

    def identity(self) -> dict[str, Any]:
        """What makes this run itself (see identity.py); the endpoint's fields are ``None``
        before the endpoint check."""
        o = self.options
        endpoint = self.settings.endpoint if self.settings else None
        if o.max_length:
            max_length = o.max_length
        elif endpoint is not None:
            max_length = endpoint.max_model_len or DEFAULT_MAX_LENGTH
        else:
            max_length = None
        return {
            "config_sha256": self.eval_config.sha256,
            "limit": o.limit,
            "max_length": max_length,
            "thresholds": [asdict(t) for t in o.thresholds],
            "gate": {k: v for k, v in o.gate.to_dict().items() if k != "baseline_run_id"},
            "model": endpoint.model if endpoint else None,
            "max_model_len": endpoint.max_model_len if endpoint else None,
            "tokenizer": o.tokenizer
            or ("remote" if endpoint and endpoint.remote_tokenizer else None),
            "lm_eval": versions()["lm_eval"],
            "chat": o.chat.to_dict(),
        }

    def header(self) -> Summary:
        """The summary's run-wide fields (``summary_header`` redacts the URLs)."""
        endpoint = self.settings.endpoint if self.settings else None
        resumes = list(self.previous_summary.get("resumes") or [])
        if self.resume_entry is not None:
            resumes.append(self.resume_entry)
        given = self.options.endpoint
        return summary_header(
            run_id=self.run_id,
            endpoint=endpoint.url if endpoint else (given.url if given else ""),
            model=endpoint.model if endpoint else self.options.model,
            endpoints=[e.url for e in self.replicas]
            or [e.url for e in self.endpoints]
            or [e.url for e in self.options.endpoints],
            router=self.router.url if self.router else None,
            replicas=[e.url for e in self.replicas],
            config_path=str(self.eval_config.path),
            config_sha256=self.eval_config.sha256,
            config_warnings=self.config_warnings,
            gate=self.options.gate.to_dict(),
            seeds={
                "random_seed": 0,
                "numpy_random_seed": 1234,
                "torch_random_seed": 1234,
                "fewshot_random_seed": 1234,
            },
            settings={
                "batch_size": self.options.batch_size,
                "limit": self.options.limit,
                "max_length": self.options.max_length
                or (endpoint.max_model_len if endpoint else None)
                or DEFAULT_MAX_LENGTH,
                "concurrency": self.options.concurrency,
                "max_concurrency": self.options.max_concurrency,
                "tokenizer": self.options.tokenizer
                or ("remote" if endpoint and endpoint.remote_tokenizer else None),
                "max_retries": self.options.max_retries,
                "outage_timeout": self.options.outage_timeout,
                "strict_context": self.options.strict_context,
                "chat": self.options.chat.to_dict(),
                "add_bos_token": self.options.add_bos_token or "auto",
            },
            endpoint_check=self._endpoint_check(endpoint),
            identity=self.identity(),
            resumes=resumes,
        )

    def _endpoint_check(self, endpoint: EndpointInfo | None) -> dict[str, Any] | None:
        if endpoint is None:
            return None
        found = endpoint_findings(endpoint)
        if endpoint.tokenizer is not None:
            setting = self.options.add_bos_token or "auto"
            found["tokenizer"] = tokenizer_check.findings(endpoint.tokenizer, setting)
        return found


STATE = pytest.StashKey[EvalchemyState]()
