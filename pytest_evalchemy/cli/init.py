"""``evalchemy init [DIR]``: a starting point in a project of one's own, written from the files
the wheel carries (the example configs, the schema), so nothing needs a checkout of this
repository. Existing files are left as they are unless ``--force``. Sends nothing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .. import __version__
from ..core.resources import example_config, schema_path
from ..core.results import atomic_write_text
from .parsing import EXIT_OK, EXIT_USAGE_ERROR

# JSON has no comments: each config says what it is in its own "description".
_DESCRIPTIONS = {
    "eval_config.json": (
        "Written by `evalchemy init`: the public lm-eval tasks of the seed guide (their data "
        "comes from the Hugging Face hub). Edit `enabled`, `limit` (1 for a smoke run, null for "
        "all), `num_fewshot` and `thresholds`; add your own task folders under include_paths. "
        "Reference: the config section of the pytest-evalchemy README; schema: "
        "eval_config.schema.json beside this file."
    ),
    "offline_config.json": (
        "Written by `evalchemy init`: the plugin's own offline benchmarks (mini_arc, "
        "mini_hellaswag, mini_mmlu, mini_gsm8k; they ship with the plugin), no hub needed: "
        "pytest --evalchemy-endpoint=URL --evalchemy-config=configs/offline_config.json"
    ),
}

CONFTEST = '''\
"""pytest-evalchemy hooks of this project (written by `evalchemy init`: edit or delete).

The hooks apply to every item of the run, wherever the config file lives. Specs and more:
the Hooks section of the pytest-evalchemy README.
"""

from __future__ import annotations

import os


def pytest_evalchemy_update_summary(config, summary):
    """Record which commit the scores belong to (CI sets GITHUB_SHA)."""
    summary["commit"] = os.environ.get("GITHUB_SHA") or os.environ.get("GIT_COMMIT")


# Change how an item runs before it runs: return a changed request, or None to keep it.
#
# import dataclasses
#
# def pytest_evalchemy_item_request(item, request):
#     if os.environ.get("EVAL_SMOKE"):
#         return dataclasses.replace(request, limit=5)
#     return None
'''

# The actions are pinned to commits (a tag can be moved to other code); the comment names the
# release, which is what Dependabot and zizmor read. Least privilege: the job only reads the
# repository, and the checkout keeps no token on disk for later steps.
ACTIONS = {
    "checkout": ("actions/checkout", "3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "setup-python": ("actions/setup-python", "5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0"),
    "upload-artifact": (
        "actions/upload-artifact",
        "bbbca2ddaa5d8feaa63e36b76fdaad77386f024f",
        "v7.0.0",
    ),
}


def _uses(name: str) -> str:
    repo, commit, release = ACTIONS[name]
    return f"{repo}@{commit}  # {release}"


WORKFLOW_TEMPLATE = """\
# Evaluate the model in CI (written by `evalchemy init` of pytest-evalchemy {version}). Set the
# repository secrets EVALCHEMY_ENDPOINT (e.g. https://host/v1/completions) and, if the server
# needs one, EVALCHEMY_API_KEY. An item below its threshold fails the job (exit status 1).
name: evalchemy
on:
  workflow_dispatch:
  push:
    branches: [main]
permissions: {{}}
# One evaluation of a branch at a time: a second push waits instead of loading the server twice.
concurrency:
  group: evalchemy-${{{{ github.ref }}}}
  cancel-in-progress: false
jobs:
  evaluate:
    name: benchmarks against the endpoint
    runs-on: ubuntu-latest
    permissions:
      contents: read
    steps:
      - uses: {checkout}
        with:
          persist-credentials: false
      - uses: {setup_python}
        with:
          python-version: "3.12"
      # The version that wrote this workflow: a new release is taken on purpose, not by surprise.
      - name: install
        run: pip install "pytest-evalchemy=={version}"
      - name: benchmarks
        env:
          EVALCHEMY_ENDPOINT: ${{{{ secrets.EVALCHEMY_ENDPOINT }}}}
          EVALCHEMY_API_KEY: ${{{{ secrets.EVALCHEMY_API_KEY }}}}
          EVALCHEMY_RUN_ID: ci-${{{{ github.run_id }}}}
          HF_HUB_OFFLINE: "1"  # the offline benchmarks need no hub; drop it for the public tasks
        run: >
          pytest --evalchemy-config=configs/offline_config.json -n 4
          --junitxml=results/junit.xml --evalchemy-markdown=results/scores.md
      - uses: {upload_artifact}
        if: always()
        with:
          name: evalchemy-results
          path: results/
"""


def workflow_text() -> str:
    """The CI workflow, naming the plugin's own version."""
    return WORKFLOW_TEMPLATE.format(
        version=__version__,
        checkout=_uses("checkout"),
        setup_python=_uses("setup-python"),
        upload_artifact=_uses("upload-artifact"),
    )


@dataclass(frozen=True)
class StarterFile:
    """One file ``init`` writes: where, what, and what the user does with it."""

    path: str  # relative to the target folder
    text: str
    edit: str


def _config_text(name: str) -> str:
    data = json.loads(example_config(name).read_text(encoding="utf-8"))
    # The schema beside the config lets an editor check and complete it.
    head = {"$schema": "./eval_config.schema.json", "description": _DESCRIPTIONS[name]}
    return json.dumps({**head, **data}, indent=2, ensure_ascii=False) + "\n"


def starter_files(conftest_exists: bool = False) -> list[StarterFile]:
    """The files of a starting point; the hooks go beside an existing ``conftest.py``."""
    conftest = "evalchemy_conftest_example.py" if conftest_exists else "conftest.py"
    conftest_edit = (
        "copy the hooks you want into your conftest.py"
        if conftest_exists
        else "hooks of the run (commit in the summary; changing requests)"
    )
    return [
        StarterFile(
            "configs/eval_config.json",
            _config_text("eval_config.json"),
            "the benchmarks a plain `pytest --evalchemy-endpoint=URL` runs: enable, limit, "
            "thresholds",
        ),
        StarterFile(
            "configs/offline_config.json",
            _config_text("offline_config.json"),
            "the offline benchmarks (no hub): --evalchemy-config=configs/offline_config.json",
        ),
        StarterFile(
            "configs/eval_config.schema.json",
            schema_path().read_text(encoding="utf-8"),
            "the JSON Schema of both (for your editor; do not edit)",
        ),
        StarterFile(conftest, CONFTEST, conftest_edit),
        StarterFile(
            ".github/workflows/evalchemy.yml",
            workflow_text(),
            "a CI job: set the secret EVALCHEMY_ENDPOINT",
        ),
    ]


def init(target: Path, force: bool, out: TextIO, err: TextIO) -> int:
    """Write the starting point into ``target``; existing files stay unless ``force``."""
    target = target.absolute()
    if target.exists() and not target.is_dir():
        print(f"evalchemy init: {target} is a file, not a folder; name a folder", file=err)
        return EXIT_USAGE_ERROR
    files = starter_files(conftest_exists=(target / "conftest.py").exists() and not force)
    print(f"evalchemy init: a starting point in {target}", file=out)
    width = max(len(f.path) for f in files)
    for f in files:
        path = target / f.path
        if path.exists() and not force:
            print(f"  kept     {f.path:<{width}}  (exists; --force replaces it)", file=out)
            continue
        try:
            atomic_write_text(path, f.text)
        except OSError as exc:
            print(f"evalchemy init: cannot write {path}: {exc.strerror}", file=err)
            return EXIT_USAGE_ERROR
        print(f"  wrote    {f.path:<{width}}  {f.edit}", file=out)
    print(
        "\nnext:\n"
        "  1. point it at your server: pytest --evalchemy-endpoint=http://HOST:8000/v1/completions\n"
        "     (--evalchemy-config=configs/offline_config.json runs without the hub)\n"
        "  2. edit configs/eval_config.json: which tasks, limit (null = all), thresholds\n"
        "  3. your own lm-eval task YAMLs: a folder named in the config's include_paths; give\n"
        "     data files as absolute paths or load them with `custom_dataset: !function`\n"
        "     (lm-eval reads a relative data_files path from the working directory)\n"
        "  4. the results: results/<run id>/; evalchemy report results/<run id>",
        file=out,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = "evalchemy init") -> int:
    """The ``init`` subcommand of ``evalchemy``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write a starting point for pytest-evalchemy into DIR: the example "
        "configs and their schema, a conftest.py with the plugin's hooks, a CI workflow.",
    )
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR", help="default: here")
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return init(Path(ns.dir), ns.force, sys.stdout, sys.stderr)
