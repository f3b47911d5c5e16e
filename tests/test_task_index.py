"""The persistent index of lm-eval's task folders and the TaskManager built from it: the same
task configs as lm-eval's full index, a cache rebuilt when lm-eval or its folder changes, and
include paths that are always read fresh."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_evalchemy.run.lmeval import task_index
from pytest_evalchemy.testing.task_configs import config_snapshot

_TASK = """\
dataset_path: json
output_type: multiple_choice
test_split: test
doc_to_text: "{{q}}"
doc_to_target: 0
doc_to_choice: ["a", "b"]
"""

# A small lm-eval-like tasks folder with what the real one has: templates that are not
# *.yaml and carry the tags, quoted keys, a group whose members live in another family, a
# name defined twice in one family (the first in sorted order wins), a tag spread over two
# families, and a group with an inline task.
TREE = {
    "fam_a/_template_yaml": _TASK + "tag: tag_a\nnum_fewshot: 1\n",
    "fam_a/a1.yaml": "include: _template_yaml\ntask: a1\n",
    "fam_a/sub/a2.yaml": '"include": "../_template_yaml"\n"task": "a2"\n',
    "fam_b/group_b.yaml": "group: group_b\ntask:\n  - a1\n  - b1\n  - task: inline_b\n"
    + "    dataset_path: json\n    output_type: multiple_choice\n",
    "fam_b/b1.yaml": _TASK + "task: b1\n",
    "fam_c/c1.yaml": _TASK + "task: c1\ntag: spread_tag\n",
    "fam_d/c2.yaml": _TASK + "task: c2\ntag: [spread_tag]\n",
    "fam_e/x/dup.yaml": _TASK + "task: dup\nnum_fewshot: 2\n",
    "fam_e/y/dup.yaml": _TASK + "task: dup\nnum_fewshot: 3\n",
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    return _write(tmp_path / "tasks", TREE)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # Each test builds its own managers and never touches the user's cache folder.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    saved = dict(task_index._managers)
    task_index._managers.clear()
    task_index.scan.cache_clear()
    yield
    task_index._managers.clear()
    task_index._managers.update(saved)


def _reference(tasks_dir: Path, include: list[Path] | None = None) -> Any:
    """lm-eval's default TaskManager, with ``tasks_dir`` in place of its own tasks folder."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[tasks_dir, *(include or [])], include_defaults=False)


def _folders(tm: Any) -> set[str]:
    return {str(Path(e.yaml_path).parent) for e in tm.task_index.values() if e.yaml_path}


@pytest.mark.parametrize(
    ("names", "indexed"),
    [
        (["a1"], {"fam_a"}),  # the family folder, because its template carries a tag
        (["a2"], {"fam_a"}),
        (["tag_a"], {"fam_a"}),
        (["group_b"], {"fam_a", "fam_b"}),  # a member from another family comes along
        (["dup"], {"fam_e"}),  # both definitions, so the first one wins as in the full index
        (["b1", "a2"], {"fam_a", "fam_b"}),
    ],
)
def test_same_configs_as_the_full_index(
    tasks_dir: Path, names: list[str], indexed: set[str]
) -> None:
    tm = task_index.task_manager(names, tasks_dir=tasks_dir)
    assert config_snapshot(tm, names) == config_snapshot(_reference(tasks_dir), names)
    families = {Path(f).relative_to(tasks_dir).parts[0] for f in _folders(tm)}
    assert families == indexed


def test_a_tag_spread_over_families_uses_the_full_index(tasks_dir: Path) -> None:
    tm = task_index.task_manager(["spread_tag"], tasks_dir=tasks_dir)
    snapshot = config_snapshot(tm, ["spread_tag"])
    assert sorted(snapshot["tasks"]) == ["c1", "c2"]
    assert snapshot == config_snapshot(_reference(tasks_dir), ["spread_tag"])


def test_unknown_names_are_reported(tasks_dir: Path) -> None:
    with pytest.raises(task_index.UnknownTasks) as info:
        task_index.task_manager(["a1", "no_such_task"], tasks_dir=tasks_dir)
    assert info.value.names == ("no_such_task",)


def test_the_index_is_cached_and_rebuilt_when_lm_eval_changes(
    tasks_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = task_index.public_index(tasks_dir, directory=cache)
    assert not first.from_cache
    assert first.folders["a2"] == "fam_a/sub"
    assert first.folders["tag_a"] == "fam_a"
    assert first.folders["spread_tag"] == ""  # over two families: the whole folder
    again = task_index.public_index(tasks_dir, directory=cache)
    assert again.from_cache
    assert again.folders == first.folders
    saved = json.loads(task_index.index_path(tasks_dir, cache).read_text())
    assert saved["key"]["lm_eval"] == task_index._lm_eval_version()

    # Another lm-eval version: scanned again.
    monkeypatch.setattr(task_index, "_lm_eval_version", lambda: "99.0")
    assert not task_index.public_index(tasks_dir, directory=cache).from_cache
    assert task_index.public_index(tasks_dir, directory=cache).from_cache

    # A task family added in place (an editable lm-eval): scanned again, the new name known.
    task_index.scan.cache_clear()
    _write(tasks_dir, {"fam_new/n1.yaml": _TASK + "task: n1\n"})
    updated = task_index.public_index(tasks_dir, directory=cache)
    assert not updated.from_cache
    assert updated.folders["n1"] == "fam_new"


def test_a_stale_cache_entry_is_rescanned_before_giving_up(tasks_dir: Path) -> None:
    task_index.public_index(tasks_dir)  # cached in $XDG_CACHE_HOME
    # A task added inside an existing folder changes no folder time the key looks at.
    _write(tasks_dir, {"fam_a/sub/deeper/a3.yaml": "include: ../../_template_yaml\ntask: a3\n"})
    task_index.scan.cache_clear()
    tm = task_index.task_manager(["a3"], tasks_dir=tasks_dir)
    assert config_snapshot(tm, ["a3"]) == config_snapshot(_reference(tasks_dir), ["a3"])


def test_include_paths_are_read_fresh_and_override_lm_eval(tasks_dir: Path, tmp_path: Path) -> None:
    mine = _write(tmp_path / "mine", {"b1.yaml": _TASK + "task: b1\nnum_fewshot: 7\n"})
    task_index.public_index(tasks_dir)  # the cache holds lm-eval's folders only
    tm = task_index.task_manager(["b1", "a1"], [mine], tasks_dir=tasks_dir)
    reference = _reference(tasks_dir, [mine])
    assert config_snapshot(tm, ["b1", "a1"]) == config_snapshot(reference, ["b1", "a1"])
    assert config_snapshot(tm, ["b1"])["tasks"]["b1"]["num_fewshot"] == 7
    # A new task in the include path is seen by the next TaskManager, cache or not.
    _write(mine, {"m1.yaml": _TASK + "task: m1\n"})
    task_index._managers.clear()
    assert "m1" in task_index.task_manager(["m1"], [mine], tasks_dir=tasks_dir).task_index


def test_public_lm_eval_tasks_resolve_to_their_folders() -> None:
    """lm-eval's own arc_easy, hellaswag and the mmlu group, from the index (the comparison
    with lm-eval's full index, ~15 s, is a row of `make perf`)."""
    names = ["arc_easy", "hellaswag", "mmlu"]
    tm = task_index.task_manager(names)
    tasks = task_index._tasks_root(None)
    assert {Path(f).relative_to(tasks).as_posix() for f in _folders(tm)} >= {
        "arc",
        "hellaswag",
        "mmlu/default",
    }
    assert len(tm.task_index) < 1000  # a few folders, not lm-eval's ~14,000 names
    snapshot = config_snapshot(tm, names)
    assert len(snapshot["tasks"]) == 59  # arc_easy, hellaswag and mmlu's 57 subjects
    assert snapshot["tasks"]["arc_easy"]["metadata"]["config_source"] == str(
        tasks / "arc" / "arc_easy.yaml"
    )
