"""The documentation is self-contained: docs/methods.md covers every built-in solver and strategy,
every relative link in README.md and docs/*.md resolves, and no tracked file cites a document that
is not in the repository (only the project's own docs/ pages and the papers are cited)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mtlsolve.registry import registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: names of documents that are not part of the repository (spelled in pieces so this file does not match)
OUTSIDE = re.compile(
    "|".join(
        [
            "catal" + "ogue",
            "seed[- ]" + "methods",
            r"design\." + "md",
            "shared" + "/",
            r"(?<!docs/)(?<!\]\()problems\." + "md",  # docs/problems.md and relative links to it are the project's own
        ]
    ),
    re.IGNORECASE,
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCS_MENTION = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a Markdown file (outside fenced code)."""
    found: set[str] = set()
    for line in without_code(path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name, k = base, 0
            while name in found:  # GitHub numbers repeated headings
                k += 1
                name = f"{base}-{k}"
            found.add(name)
    return found


def without_code(text: str) -> str:
    """Markdown text with fenced code blocks and inline code spans removed."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def test_no_tracked_file_refers_to_outside_documents():
    hits = []
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


def test_every_built_in_solver_and_strategy_has_a_section():
    sections = anchors(DOCS / "methods.md")
    solvers = [e.name for e in registry.entries() if e.distribution == "mtlsolve"]
    assert len(solvers) >= 40
    strategies = [e.name for e in registry.strategy_entries() if e.distribution == "mtlsolve"]
    assert strategies
    missing = [name for name in solvers + strategies if slug(name) not in sections]
    assert not missing, f"docs/methods.md has no section for {missing}"


@pytest.mark.parametrize("page", ["README.md"] + sorted(f"docs/{p.name}" for p in DOCS.glob("*.md")))
def test_relative_links_resolve(page):
    path = ROOT / page
    broken = []
    for target in LINK.findall(without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_docs_mentions_in_code_resolve():
    """``docs/<page>.md#anchor`` cited in code, comments and bench output names an existing page and heading."""
    broken = []
    for path in tracked_files():
        if path.suffix not in (".py", ".md", ".toml", ".cfg", ".txt"):
            continue
        text = text_of(path) or ""
        for page, anchor in DOCS_MENTION.findall(text):
            doc = DOCS / page
            if not doc.exists():
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}")
            elif anchor and anchor not in anchors(doc):
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}#{anchor}")
    assert not broken, "docs references that do not resolve:\n" + "\n".join(sorted(set(broken)))
