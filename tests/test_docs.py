"""The documentation's links lead somewhere: every relative link (and image) in README.md, docs/
and devices/README.md names a file or folder of this repository, and every #anchor a heading."""
import re
from pathlib import Path

from .conftest import REPO

DOCS = [REPO / "README.md", REPO / "devices" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+\s+(.*)$", md.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


def test_every_relative_link_resolves():
    broken = []
    for md in DOCS:
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(REPO)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{md.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page_and_no_page_points_at_history():
    assert len((REPO / "README.md").read_bytes()) < 14_000  # the research record lives in docs/
    for md in DOCS:  # issue numbers, commit hashes and scratch logs mean nothing to a reader of the repo
        assert not re.search(r"\bissue \d+|\blogs/|commit [0-9a-f]{7}", md.read_text()), md


def test_the_design_of_record_names_every_module():
    """docs/architecture.md is the design of record: each module of the packages is named there with
    what it owns, so a new module comes with its line (and a removed one loses it)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(REPO)) for pkg in ("edge_runtime", "train", "export", "benchmarks", "devices")
               for p in sorted((REPO / pkg).glob("*.py")) if p.name not in ("__init__.py", "__main__.py")
               and p.name not in text]
    assert missing == []
