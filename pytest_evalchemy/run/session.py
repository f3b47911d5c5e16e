"""A run's set-up before its first item: the config's tasks checked, the vLLM servers started
(``--evalchemy-serve``), every endpoint checked, a router put in front of replicas of one model,
and the chat check. Imports no pytest: terminal lines and clean-ups go through the callbacks
the pytest glue hands in, and problems are raised as ``EvalchemyError``s it reports."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..core.config import EvalConfig, PlannedItem
from ..core.endpoint import Endpoint
from ..core.errors import ConfigError, EndpointError
from ..core.redact import redact_url
from .chat_check import inspect_chat, refuse_unusable
from .chat_settings import ChatOptions, generation_only, needs_server_template, reasoning_setting
from .endpoint import EndpointInfo, check_endpoint, check_endpoints
from .reasoning import DEFAULT_THINK_END
from .tasks import catalog

# A terminal line (without the "evalchemy: " prefix the glue adds), and whether it warns.
Say = Callable[[str, bool], None]
# Registers what to run when the session ends (pytest's ``config.add_cleanup``).
AddCleanup = Callable[[Callable[[], None]], None]


class SetupOptions(Protocol):
    """What the set-up reads of the run's options (``glue/options.Options``)."""

    endpoints: tuple[Endpoint, ...]
    model: str | None
    tokenizer: str | None
    limit: int | float | None
    wait_for_endpoint: float | None
    allow_mixed_models: bool
    router: Endpoint | None
    chat: ChatOptions
    add_bos_token: str | None
    serve: str | None
    replicas: int
    gpu: str | None
    vllm_python: str | None
    serve_args: tuple[str, ...]
    serve_timeout: float

    def endpoint_at(self, url: str) -> Endpoint: ...


@dataclass(frozen=True)
class TaskCheck:
    """What the task check found that does not stop the run."""

    warnings: list[str]
    notes: list[str]


def check_tasks(eval_config: EvalConfig, limit: int | float | None) -> TaskCheck:
    """The config's task names, few-shot counts and limits, as ``--validate-config`` checks
    them (from the YAMLs and local data files: no request, no task code): errors raise
    ``ConfigError`` before any traffic, warnings go to the summary and the terminal."""
    from .tasks.checks import check_task_data, check_task_names, unchecked_note

    names = check_task_names(eval_config)
    data = check_task_data(eval_config, limit)
    errors = [*names.errors, *data.errors]
    if errors:
        raise ConfigError(errors)
    return TaskCheck(
        list(data.warnings), [unchecked_note(data.unchecked)] if data.unchecked else []
    )


@dataclass
class EndpointSetup:
    """The endpoint part of the set-up, filled as it goes: a failure leaves what was known
    (the servers started) for the summary. ``run`` raises ``EndpointError``."""

    selected: list[PlannedItem]  # what -k and -m keep: only it decides what the endpoint offers
    include_paths: Sequence[Path]
    run_root: Path  # the run folder: the servers' and the router's logs
    cache_dir: Path  # the servers' VLLM_CACHE_ROOT and HF_HOME
    say: Say
    add_cleanup: AddCleanup
    endpoints: tuple[Endpoint, ...] = ()  # the endpoints given, or the servers started here
    infos: list[EndpointInfo] = field(default_factory=list)  # what items send to
    replicas: list[Endpoint] = field(default_factory=list)  # behind the router
    router: Endpoint | None = None

    def run(self, options: SetupOptions) -> None:
        self.endpoints = options.endpoints
        if options.serve:
            self.endpoints = tuple(options.endpoint_at(url) for url in self._start_servers(options))
        names = {n for item in self.selected for n in item.task.tasks}
        check: dict[str, Any] = {
            "model": options.model,
            "local_tokenizer": options.tokenizer,
            "need_tokenizer": catalog.needs_tokenizer(names, self.include_paths),
            # The completions check runs on completions URLs; behind a chat URL the chat check
            # looks for the completions endpoint first (a chat-only server has none).
            "need_logprobs": not all(e.chat_url for e in self.endpoints),
            "wait_s": options.wait_for_endpoint,
            "on_wait": lambda line: self.say(line, True),
        }
        if not options.allow_mixed_models:
            # Before the check's probes: a replica the router would wait for in vain is named
            # with no completion sent (mixed models may need no router: _route asks then).
            self._check_router_health(options)
        # Every replica is checked, with or without a router in front.
        infos = check_endpoints(
            self.endpoints, allow_mixed_models=options.allow_mixed_models, **check
        )
        checked = self._route(options, list(zip(self.endpoints, infos, strict=True)), check)
        self.infos = self._check_chat(options, checked)
        self._check_bos(options)

    def _check_bos(self, options: SetupOptions) -> None:
        """add_bos_token true needs a tokenizer with a BOS token."""
        facts = self.infos[0].tokenizer if self.infos else None
        if facts is None or facts.bos_id is not None:
            return
        if options.add_bos_token == "true":
            where = "--evalchemy-add-bos-token true"
        else:
            asked = [i.task.key for i in self.selected if i.task.add_bos_token == "true"]
            if options.add_bos_token is not None or not asked:
                return
            where = f"add_bos_token true of {', '.join(asked)}"
        raise EndpointError(
            f"{where}: the tokenizer of {redact_url(self.infos[0].url)} has no BOS token to "
            "start the prompts with; set add_bos_token to auto or false"
        )

    def _start_servers(self, options: SetupOptions) -> list[str]:
        """Start the session's vLLM server, or its ``--evalchemy-replicas`` (replica i on the
        i-th device of ``--evalchemy-gpu``), for the whole run, also under xdist; they start
        side by side and are all stopped when the session ends, on failure and on Ctrl-C too."""
        from .router import split_devices
        from .serve import ServeError, ServeSpec, VllmServer

        o = options
        servers: list[VllmServer] = []
        for i, gpu in enumerate(split_devices(o.gpu, o.replicas)):
            name = "vllm_server.log" if o.replicas == 1 else f"vllm_server_{i}.log"
            spec = ServeSpec(
                model=o.serve or "",
                log_path=self.run_root / name,
                python=o.vllm_python or sys.executable,
                gpu=gpu,
                extra_args=o.serve_args,
                startup_timeout=o.serve_timeout,
                cache_dir=self.cache_dir,
            )
            server = VllmServer(spec)
            self.add_cleanup(server.stop)
            servers.append(server)
        try:
            for server in servers:
                self.say(f"starting vLLM on {o.serve} (log: {server.spec.log_path})", False)
                for warning in server.start():
                    self.say(warning, True)
            for server in servers:
                server.wait_ready()
        except ServeError as exc:
            for server in servers:
                server.stop()
            raise EndpointError(f"the vLLM server did not start: {exc}") from None
        return [server.completions_url for server in servers]

    def _check_router_health(self, options: SetupOptions) -> None:
        """Every endpoint's ``/health``, when a ``vllm-router`` is to stand in front of them."""
        from . import router

        if len(self.endpoints) > 1 and options.router is None and router.find_binary():
            router.check_health(self.endpoints, options.wait_for_endpoint)

    def _route(
        self,
        options: SetupOptions,
        checked: list[tuple[Endpoint, EndpointInfo]],
        check: dict[str, Any],
    ) -> list[tuple[Endpoint, EndpointInfo]]:
        """The endpoints items send to: a router in front of several replicas of one model
        (the user's ``--evalchemy-router``, or a ``vllm-router`` started here), else
        ``checked``."""
        from . import router

        infos = [info for _, info in checked]
        endpoints = [endpoint for endpoint, _ in checked]
        front = options.router
        if front is None:
            if len(infos) < 2 or len({i.model for i in infos}) > 1:
                # One endpoint, or --evalchemy-allow-mixed-models: a router would mix the
                # models within an item, so each item keeps to one endpoint.
                return checked
            binary = router.find_binary()
            if binary is None:
                self.say(
                    f"{router.BINARY} is not installed ({router.INSTALL_HINT}): each xdist "
                    f"worker keeps to one of the {len(infos)} endpoints instead of every item "
                    "using all of them",
                    True,
                )
                return checked
            router.check_replicas(infos, endpoints)
            if options.allow_mixed_models:
                self._check_router_health(options)  # the models are the same after all
            started = router.Router(endpoints, self.run_root / "vllm_router.log", binary)
            self.add_cleanup(started.stop)
            try:
                started.start()
                started.wait_ready()
            except router.ServeError as exc:
                started.stop()
                raise EndpointError(f"{router.BINARY} did not start: {exc}") from None
            front = options.endpoint_at(started.completions_url)
            self.say(
                f"{router.BINARY} on {started.base_url} in front of {len(infos)} replicas "
                f"(log: {started.log_path})",
                False,
            )
        else:
            router.check_replicas(infos, endpoints)
        model = infos[0].model if infos else check["model"]
        routed = check_endpoint(front, **{**check, "model": model})
        self.replicas = endpoints
        self.router = front
        return [(front, routed)]

    def _check_chat(
        self, options: SetupOptions, checked: list[tuple[Endpoint, EndpointInfo]]
    ) -> list[EndpointInfo]:
        """The chat part of the endpoint check (template, chat endpoint, reasoning) and the
        refusals it leads to."""
        enabled, paths = self.selected, self.include_paths
        generation = {item.key for item in enabled if generation_only(item.task, paths)}
        probe = any(
            reasoning_setting(item.task, options.chat) == "auto"
            for item in enabled
            if item.key in generation
        )
        loglikelihood_keys = [item.key for item in enabled if item.key not in generation]
        found = []
        for endpoint, info in checked:
            info = inspect_chat(
                info,
                endpoint,
                probe_chat=probe,
                think_end_token=options.chat.think_end_token or DEFAULT_THINK_END,
                loglikelihood=bool(loglikelihood_keys),
            )
            # With a chat URL, generation items go to the chat endpoint and need no template.
            on_completions = [
                item.task for item in enabled if info.chat_url is None or item.key not in generation
            ]
            refuse_unusable(
                info,
                template_keys=needs_server_template(
                    on_completions,
                    options.chat,
                    chat_endpoint=info.chat_url is not None,
                    local_tokenizer=options.tokenizer is not None,
                ),
                loglikelihood_keys=loglikelihood_keys,
            )
            found.append(info)
        return found

    def served(self, options: Any) -> Any:
        """``options`` with the servers started here as its endpoints."""
        if not self.endpoints or self.endpoints == options.endpoints:
            return options
        return replace(options, endpoint=self.endpoints[0], endpoints=self.endpoints)
