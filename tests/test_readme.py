"""The README stays true to the code it describes: its contents list names every section, and
its options table lists every option of the option table, with its environment variable."""

from __future__ import annotations

import re

from pytest_evalchemy.glue.settings import SETTINGS

from .conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _anchor(title: str) -> str:
    # GitHub's anchors: lower case, punctuation but - and _ dropped, spaces to -.
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _sections() -> list[str]:
    fenced = re.sub(r"```.*?```", "", README, flags=re.S)
    return [m.group(1) for m in re.finditer(r"^## (.+)$", fenced, flags=re.M)]


def test_the_contents_list_every_section_in_order() -> None:
    contents = README[
        README.index("## Contents") : README.index("\n## ", README.index("## Contents") + 1)
    ]
    listed = re.findall(r"^- \[(.+?)\]\(#(.+?)\)", contents, flags=re.M)
    sections = [s for s in _sections() if s != "Contents"]
    assert [title for title, _ in listed] == sections
    assert [anchor for _, anchor in listed] == [_anchor(s) for s in sections]


def test_the_options_table_is_the_option_table() -> None:
    table = README[README.index("| option | env | default | meaning |") :]
    table = table[: table.index("\n\n")]
    rows = {}
    for line in table.splitlines()[2:]:
        # A cell's own bar is written \\| (``auto\\|N``).
        cells = [c.strip() for c in line.replace("\\|", "/").strip("|").split("|")]
        flag = cells[0].strip("`").split()[0]
        # A note in parentheses may follow the variable: "(`REQUESTS_CA_BUNDLE` also works)".
        rows[flag] = re.sub(r"\(.*?\)", "", cells[1]).strip().strip("`")
    declared = {s.flag: s.env or "" for s in SETTINGS}
    assert set(rows) == set(declared), (
        f"in the README only: {sorted(set(rows) - set(declared))}; "
        f"in glue/settings.py only: {sorted(set(declared) - set(rows))}"
    )
    assert rows == declared
