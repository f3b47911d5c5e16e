"""The command line of ``run_evalchemy.sh`` (also ``evalchemy`` and ``python -m pytest_evalchemy``).

It maps the seed guide's flags onto a pytest run of the plugin and execs it; the only work done
here is what needs no run: listing the config, validating it, and printing a dry run. Imports no
lm-eval and sends no request.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO

from ..core.config import EvalConfig, load_config, plan_items
from ..core.defaults import DEFAULT_CONFIG, DEFAULT_OUTPUT
from ..core.errors import ConfigError, EvalchemyError
from ..core.results import RunPaths, default_run_id, validate_run_id
from ..glue.settings import API_KEY_ENVS, BY_NAME, LOG_LEVELS, lookup
from ..run.endpoint import (
    DEFAULT_MAX_LENGTH,
    EndpointInfo,
    completions_url_of,
    is_chat_url,
    normalize_endpoint,
    redact_url,
)
from ..run.evaluation import RunSettings, build_request, chat_note
from ..run.tasks.checks import check_task_data, check_task_names, unchecked_note
from . import init as starter
from . import plan as plan_cli
from . import report as report_cli
from .parsing import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NO_TESTS,
    EXIT_OK,
    EXIT_TESTS_FAILED,
    EXIT_USAGE_ERROR,
    UsageParser,
)

# pytest's exit codes (pytest.ExitCode), which the exec'd run returns as they are; the front
# end's own errors use the same numbers so that CI sees one scheme.

MODEL_PLACEHOLDER = "<first model of /v1/models>"
# The plugin's lower bound for --evalchemy-max-length.
MIN_MAX_LENGTH = int(BY_NAME["max_length"].minimum or 1)

EPILOG = f"""\
subcommands:
  %(prog)s init [DIR]        write a starting config, conftest.py and CI workflow into DIR
  %(prog)s report RUN_DIR... the HTML report of a run, or a page comparing several

arguments after -- go to pytest unchanged, e.g.:
  %(prog)s --endpoint http://localhost:8000/v1/completions -- -k arc -n 4 --junitxml=report.xml

exit codes:
  {EXIT_OK}  every item passed
  {EXIT_TESTS_FAILED}  some item failed (a score below its threshold, an lm-eval error, a timeout)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_INTERNAL_ERROR}  internal error
  {EXIT_USAGE_ERROR}  usage or config error (bad flag, invalid config, unreachable endpoint)
  {EXIT_NO_TESTS}  no item selected (everything disabled, or -k matched nothing)

environment:
  EVALCHEMY_ENDPOINT   default of --endpoint
  EVALCHEMY_CONFIG     default of --config ({DEFAULT_CONFIG})
  EVALCHEMY_OUTPUT     default of --output ({DEFAULT_OUTPUT})
  EVALCHEMY_RUN_ID     default of --run-id (YYYYMMDD_HHMMSS_PID)
  EVALCHEMY_API_KEY    API key of the server (or OPENAI_API_KEY); never printed

results: <output>/<run id>/evalchemy_summary_<run id>.json, evalchemy_<run id>.log,
  evalchemy_errors_<run id>.log, <benchmark>_results.json, <benchmark>_benchmark.log
"""


class CliError(Exception):
    """A usage problem found after parsing; exits with EXIT_USAGE_ERROR."""


class _Parser(UsageParser):
    unrecognized_hint = " (pytest options go after --, e.g. -- -k arc)"


def _positive_int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the front end."""
    p = _Parser(
        prog=prog or os.environ.get("EVALCHEMY_PROG") or "evalchemy",
        description="Evaluate a model served by vLLM (OpenAI-compatible /v1/completions) on the\n"
        "benchmarks of an evaluation config with lm-evaluation-harness, as a pytest run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("the run")
    run.add_argument(
        "--endpoint",
        metavar="URL",
        help="completions endpoint, e.g. http://localhost/vllm/v1/completions "
        "(default: $EVALCHEMY_ENDPOINT)",
    )
    run.add_argument(
        "--serve",
        metavar="MODEL",
        help="start a vLLM server for MODEL for the run and evaluate it (no --endpoint needed)",
    )
    run.add_argument(
        "--gpu",
        metavar="IDS",
        help="GPUs of the server --serve starts, e.g. 0 or 0,1 (CUDA_VISIBLE_DEVICES; Linux only)",
    )
    run.add_argument("--model", metavar="NAME", help="model name (default: the first one served)")
    run.add_argument(
        "--config", metavar="FILE", help=f"evaluation config (default: {DEFAULT_CONFIG})"
    )
    run.add_argument("--output", metavar="DIR", help=f"results root (default: {DEFAULT_OUTPUT}/)")
    run.add_argument(
        "--run-id", metavar="ID", help="names the results folder (default: YYYYMMDD_HHMMSS_PID)"
    )
    run.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive_int(1),
        help="requests per batch for every task (overrides the config)",
    )
    run.add_argument(
        "--max-length",
        metavar="N",
        type=_positive_int(MIN_MAX_LENGTH),
        help="maximum sequence length, e.g. 4096 (default: the server's max_model_len, else "
        f"{DEFAULT_MAX_LENGTH})",
    )
    run.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=_log_level,
        help=f"log level: {', '.join(LOG_LEVELS)} (default: INFO)",
    )
    modes = p.add_argument_group("instead of a run").add_mutually_exclusive_group()
    modes.add_argument(
        "--list-benchmarks",
        action="store_true",
        help="list the config's benchmarks, tasks and the items a run would execute",
    )
    modes.add_argument(
        "--validate-config",
        action="store_true",
        help="check the config (syntax, schema, task names) and exit",
    )
    modes.add_argument(
        "--dry-run",
        action="store_true",
        help="print the lm-eval commands and the pytest command a run would use; run nothing",
    )
    modes.add_argument(
        "--report",
        nargs="*",
        metavar="RUN_DIR",
        help="write the HTML report of a run folder, or a page comparing several (also "
        "`evalchemy report RUN_DIR...`)",
    )
    report_cli.add_options(p.add_argument_group("reports (--report)"))
    return p


# ---------------------------------------------------------------- resolved options


@dataclass(frozen=True)
class CliOptions:
    """The parsed command line with defaults applied and paths made absolute."""

    config: Path
    output: Path
    run_id: str
    endpoint: str | None = None
    serve: str | None = None
    gpu: str | None = None
    model: str | None = None
    batch_size: int | None = None
    max_length: int | None = None
    log_level: str | None = None
    pytest_args: tuple[str, ...] = field(default=())


def _default_config() -> Path:
    here = Path.cwd() / DEFAULT_CONFIG
    if here.exists():
        return here
    # Run from elsewhere: a checkout's own config (the plugin falls back to its rootdir alike).
    checkout = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG
    return checkout if checkout.exists() else here


def resolve(ns: argparse.Namespace, pytest_args: Sequence[str]) -> CliOptions:
    """Defaults from the environment, absolute paths, and checks of the values; ``CliError``
    when one is unusable."""
    env = os.environ
    # The plugin's environment variables, as the option table names them.
    config = lookup("config", ns.config or None, env, None)[0]
    output = lookup("output", ns.output or None, env, None)[0] or DEFAULT_OUTPUT
    run_id = ns.run_id if ns.run_id is not None else env.get(BY_NAME["run_id"].env or "")
    try:
        run_id = validate_run_id(run_id) if run_id is not None else default_run_id()
    except EvalchemyError as exc:
        raise CliError(f"--run-id: {exc}") from None
    endpoint = ns.endpoint
    if endpoint is None and not ns.serve:
        endpoint = lookup("endpoint", None, env, None)[0]
    if endpoint is not None:
        try:
            endpoint = normalize_endpoint(endpoint)
        except EvalchemyError as exc:
            raise CliError(f"--endpoint: {exc}") from None
    if ns.serve and ns.endpoint:
        raise CliError(
            "--serve starts a server and evaluates it; --endpoint names a running one: give one"
        )
    if ns.gpu is not None and not re.fullmatch(r"[A-Za-z0-9_,-]+", ns.gpu):
        raise CliError(f"--gpu: expected GPU ids such as 0 or 0,1, got {ns.gpu!r}")
    return CliOptions(
        config=(Path(config) if config else _default_config()).absolute(),
        output=Path(output).absolute(),
        run_id=run_id,
        endpoint=endpoint,
        serve=ns.serve,
        gpu=ns.gpu,
        model=ns.model,
        batch_size=ns.batch_size,
        max_length=ns.max_length,
        log_level=ns.log_level,
        pytest_args=tuple(pytest_args),
    )


def gpu_warnings(gpu: str | None, serve: str | None, system: str) -> list[str]:
    """Why ``--gpu`` will have no effect, if it will not."""
    if gpu is None:
        return []
    if system != "Linux":
        return [f"--gpu is ignored on {system}: CUDA_VISIBLE_DEVICES applies on Linux only"]
    if not serve:
        return [
            "--gpu only applies to a server the run starts (--serve MODEL); it is ignored otherwise"
        ]
    return []


def pytest_command(opts: CliOptions, *, system: str | None = None) -> list[str]:
    """The pytest command line of the run (``--opt=value``: a separate value that looks like
    a path would become a rootdir candidate)."""
    system = system or platform.system()
    cmd = [sys.executable, "-m", "pytest"]
    if opts.endpoint:
        cmd.append(f"--evalchemy-endpoint={opts.endpoint}")
    if opts.serve:
        cmd.append(f"--evalchemy-serve={opts.serve}")
        if opts.gpu and not gpu_warnings(opts.gpu, opts.serve, system):
            cmd.append(f"--evalchemy-gpu={opts.gpu}")
    cmd += [
        f"--evalchemy-config={opts.config}",
        f"--evalchemy-output={opts.output}",
        f"--evalchemy-run-id={opts.run_id}",
    ]
    if opts.model:
        cmd.append(f"--evalchemy-model={opts.model}")
    if opts.batch_size is not None:
        cmd.append(f"--evalchemy-batch-size={opts.batch_size}")
    if opts.max_length is not None:
        cmd.append(f"--evalchemy-max-length={opts.max_length}")
    if opts.log_level:
        cmd += [f"--evalchemy-log-level={opts.log_level}", f"--log-level={opts.log_level}"]
    return cmd + list(opts.pytest_args)


def _shown(cmd: list[str]) -> str:
    """A command line for the terminal: credentials in the endpoint URL are left out."""
    prefix = "--evalchemy-endpoint="
    return shlex.join(
        prefix + redact_url(a.removeprefix(prefix)) if a.startswith(prefix) else a for a in cmd
    )


# ---------------------------------------------------------------- the modes


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _or_dash(value: object, none: str = "-") -> str:
    return none if value is None else str(value)


def _load(path: Path, err: TextIO) -> EvalConfig | None:
    try:
        return load_config(path, flag="--config")
    except ConfigError as exc:
        count = len(exc.problems)
        print(f"config INVALID: {path}: {count} problem{'s' * (count != 1)}", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return None


def list_benchmarks(opts: CliOptions, out: TextIO, err: TextIO) -> int:
    """Print the config's benchmarks, tasks and the items a run would execute."""
    config = _load(opts.config, err)
    if config is None:
        return EXIT_USAGE_ERROR
    plan = plan_items(config)
    print(f"config: {config.path}", file=out)
    print(f"\nbenchmarks ({len(config.benchmarks)}):", file=out)
    rows = [(b.name, _yes(b.enabled), " ".join(b.tasks), b.description) for b in config.benchmarks]
    for line in _table(("benchmark", "enabled", "tasks", "description"), rows):
        print(line, file=out)
    tasks = list(config.tasks)
    tasks += [i.task for i in plan if not i.task.configured and i.task not in tasks]
    print(f"\ntasks ({len(tasks)}):", file=out)
    rows = [
        (
            t.key,
            _yes(t.enabled),
            " ".join(t.tasks),
            _or_dash(t.num_fewshot, "default"),
            _or_dash(t.limit, "all"),
            _or_dash(t.batch_size, "1"),
            f"{t.timeout:g}s" if t.timeout is not None else "-",
            t.description if t.configured else "(no task entry: lm-eval's defaults)",
        )
        for t in tasks
    ]
    header = (
        "task",
        "enabled",
        "lm-eval tasks",
        "few-shot",
        "limit",
        "batch",
        "timeout",
        "description",
    )
    for line in _table(header, rows):
        print(line, file=out)
    runs = sum(i.enabled for i in plan)
    print(f"\nitems a run would execute ({runs} of {len(plan)}):", file=out)
    rows = [("run" if i.enabled else "skipped", i.key, i.reason) for i in plan]
    for line in _table(("status", "item", "reason"), rows):
        print(line, file=out)
    return EXIT_OK


def validate_config(opts: CliOptions, out: TextIO, err: TextIO) -> int:
    """Check syntax, schema and task names; ``config OK: ...`` and 0 only when valid."""
    config = _load(opts.config, err)
    if config is None:
        return EXIT_USAGE_ERROR
    names = check_task_names(config)
    data = check_task_data(config)
    for problem in [*names.warnings, *data.warnings]:
        print(f"warning: {problem}", file=err)
    if not names.public_checked:
        print("warning: lm-eval is not installed: public task names were not checked", file=err)
    errors = [*names.errors, *data.errors]
    if errors:
        count = len(errors)
        print(f"config INVALID: {config.path}: {count} problem{'s' * (count != 1)}", file=err)
        for problem in errors:
            print(f"  {problem}", file=err)
        return EXIT_USAGE_ERROR
    if data.unchecked:
        print(f"note: {unchecked_note(data.unchecked)}", file=err)
    runs = sum(i.enabled for i in plan_items(config))
    print(
        f"config OK: {len(config.benchmarks)} benchmarks, {len(config.tasks)} tasks, "
        f"{runs} items would run ({config.path})",
        file=out,
    )
    return EXIT_OK


def _dry_run_settings(opts: CliOptions, config: EvalConfig) -> RunSettings:
    # What the endpoint check would learn, without asking the server.
    if opts.endpoint:
        url = opts.endpoint
    elif opts.serve:
        url = "<server started by --serve>/v1/completions"
    else:
        url = "<--endpoint URL>"
    shown = redact_url(url) if opts.endpoint else url
    return RunSettings(
        endpoint=EndpointInfo(
            url=completions_url_of(shown),
            model=opts.model or (opts.serve if opts.serve else MODEL_PLACEHOLDER),
            max_model_len=None,
            remote_tokenizer=True,
            # A chat URL: generation items would go there (the check would confirm it).
            chat_url=shown if is_chat_url(shown) else None,
        ),
        paths=RunPaths.create(opts.output, opts.run_id),
        batch_size=opts.batch_size,
        max_length=opts.max_length,
        include_paths=config.lm_eval_include_paths,
    )


def dry_run(opts: CliOptions, out: TextIO, err: TextIO) -> int:
    """Print each item's ``lm-eval run`` command and the pytest command; send and write nothing."""
    config = _load(opts.config, err)
    if config is None:
        return EXIT_USAGE_ERROR
    for problem in check_task_names(config).errors:
        print(f"warning: {problem}", file=err)
    settings = _dry_run_settings(opts, config)
    key_prefix = "OPENAI_API_KEY=*** " if any(os.environ.get(k) for k in API_KEY_ENVS) else ""
    plan = plan_items(config)
    print(f"dry run: config {config.path}, run {opts.run_id}", file=out)
    print(f"results would go to {settings.paths.root}", file=out)
    if opts.max_length is None:
        print(
            f"note: max_length={DEFAULT_MAX_LENGTH} is the default; a run takes the server's "
            "max_model_len when it reports one (--max-length sets it)",
            file=out,
        )
    if not opts.endpoint and not opts.serve:
        print("note: no endpoint; a run needs --endpoint URL or $EVALCHEMY_ENDPOINT", file=out)
    if len(config.lm_eval_include_paths) > 1:
        folders = ", ".join(str(p) for p in config.lm_eval_include_paths)
        print(
            "note: lm-eval's --include_path takes one folder; each command reads the include "
            f"paths ({folders}) from its --config file, which the run writes",
            file=out,
        )
    for item in plan:
        if not item.enabled:
            print(f"\n# {item.key}: skipped ({item.reason})", file=out)
            continue
        print(f"\n# {item.key}", file=out)
        note = chat_note(item, settings)
        if note:
            print(f"# {note}", file=out)
        print(key_prefix + build_request(item, settings).cli_string(), file=out)
    print("\n# the run (pytest's -k/-m after -- may select fewer items):", file=out)
    print(_shown(pytest_command(opts)), file=out)
    return EXIT_OK


def _run(opts: CliOptions, out: TextIO) -> NoReturn:
    cmd = pytest_command(opts)
    env = dict(os.environ)
    if opts.serve:
        env.pop("EVALCHEMY_ENDPOINT", None)  # the run evaluates the server it starts
    print(f"evalchemy: run {opts.run_id}, results in {opts.output / opts.run_id}", file=out)
    print(f"evalchemy: {_shown(cmd)}", file=out)
    out.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and list, validate, dry-run, or exec the pytest run."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # `evalchemy --dry-run | head`: the reader left; end quietly, as Unix tools do.
        # Python would complain once more when it flushes stdout at exit: point it at nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, pytest_args = args[:split], args[split + 1 :]
    parser = build_parser()
    if args[:1] == ["report"]:
        return report_cli.main(args[1:], f"{parser.prog} report")
    if args[:1] == ["plan"]:
        return plan_cli.main(args[1:], f"{parser.prog} plan")
    if args[:1] == ["init"]:
        return starter.main(args[1:], f"{parser.prog} init")
    ns = parser.parse_args(args)
    if ns.report is not None or ns.history:
        # Reads results folders only: none of the run's options apply.
        return report_cli.make_report(
            ns.report or [], ns.history, ns.out, against=ns.against, confidence=ns.confidence
        )
    try:
        opts = resolve(ns, pytest_args)
    except CliError as exc:
        parser.error(str(exc))
    out, err = sys.stdout, sys.stderr
    if ns.list_benchmarks:
        return list_benchmarks(opts, out, err)
    if ns.validate_config:
        return validate_config(opts, out, err)
    for warning in gpu_warnings(opts.gpu, opts.serve, platform.system()):
        print(f"warning: {warning}", file=err)
    if ns.dry_run:
        return dry_run(opts, out, err)
    if not opts.endpoint and not opts.serve:
        parser.error(
            "no endpoint: pass --endpoint URL (e.g. http://localhost:8000/v1/completions), "
            "set EVALCHEMY_ENDPOINT, or start a server with --serve MODEL"
        )
    # Its problems in this front end's words (--config), before pytest would word them.
    if _load(opts.config, err) is None:
        return EXIT_USAGE_ERROR
    _run(opts, out)
