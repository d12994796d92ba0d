"""The documentation stands alone: every link and figure of README.md and docs/*.md points
into the repository and exists (anchors included), and the text speaks about the software."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
# a file of the repository named in code spans: `fedsim/run.py`, `docs/training.md`
REPO_PATH = re.compile(r"`((?:fedsim|docs|tests|analysis|benchmarks|scenarios|sweeps|examples)/[\w./-]+\.\w+)`")
# words about how the software was made, not about the software
NOT_ABOUT_THE_SOFTWARE = re.compile(r"(?i:the issue|issue's|\blent\b|this session)|shared/|MODEL\.md")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # no headings in code blocks
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_figure_exists_in_the_repository(page):
    for target in links(page):
        if re.match(r"[a-z]+://|mailto:", target):
            continue  # a web address (a paper), not a file
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve() if name else page
        assert path.is_relative_to(REPO), f"{page.name}: {target} points outside the repository"
        assert path.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(path), f"{page.name}: no heading #{anchor} in {path.relative_to(REPO)}"
    for name in REPO_PATH.findall(page.read_text()):
        assert (REPO / name).exists(), f"{page.name}: `{name}` does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_pages_speak_about_the_software_only(page):
    found = [m.group(0) for m in NOT_ABOUT_THE_SOFTWARE.finditer(page.read_text())]
    assert not found, f"{page.name}: {found}"


def test_the_checks_catch_what_they_are_for(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\nSee [the notes](../shared/MODEL.md), ![fig](figures/nowhere.png), [x](#a-title)\n"
                    "```\n# not a heading\n[not a link](nowhere.md)\n```\n")
    assert links(page) == ["../shared/MODEL.md", "figures/nowhere.png", "#a-title"]
    assert anchors(page) == {"a-title"}
    assert slug("Statistics: how the intervals are made") == "statistics-how-the-intervals-are-made"
    assert slug("In a scenario: `optimization:` and `routing: optimal-*`") == \
        "in-a-scenario-optimization-and-routing-optimal-"
    assert NOT_ABOUT_THE_SOFTWARE.search("The issue's calibration") is not None
