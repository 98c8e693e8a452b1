"""Every ```python block of README.md (and of docs/*.md) runs as written.

The blocks of one file run in order in one namespace, as a reader pastes them into one session, in
a fresh interpreter whose working directory is a temporary folder. A block that is deliberately
partial is marked in the Markdown by the line ``<!-- readme-test: skip (reason) -->`` right before
it; the reason is required and shows in the rendered source.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->\s*$")
REASON = re.compile(r"^\s*\((.+)\)\s*$")
TIMEOUT_S = 240

#: the blocks of each file run in one interpreter; a failing block is named by its Markdown line,
#: which is also the line number of its code in the traceback
RUNNER = textwrap.dedent(
    """
    import json, sys, traceback
    path, blocks = sys.argv[1], json.load(sys.stdin)
    namespace = {"__name__": "__main__"}
    for line, code in blocks:
        try:
            exec(compile("\\n" * line + code, path, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            sys.exit(f"{path}: the block at line {line} failed")
    """
)


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line of the opening fence, code, skip reason or None)`` for every ```python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        reason = None
        if skip:
            found = REASON.match(skip.group(1))
            reason = found.group(1).strip() if found else ""
        blocks.append((line, match.group(1), reason))
    return blocks


DOCUMENTS = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if python_blocks(p)]


def test_readme_has_python_blocks():
    assert len(python_blocks(ROOT / "README.md")) >= 5
    assert DOCUMENTS[0].name == "README.md"


def test_blocks_and_skip_markers_are_read(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- readme-test: skip (needs a GPU) -->\n```python\ny = x.cuda()\n```\n"
        "<!-- readme-test: skip -->\n```python\nz\n```\n```bash\nls\n```\n",
        encoding="utf-8",
    )
    assert python_blocks(page) == [(3, "x = 1\n", None), (8, "y = x.cuda()\n", "needs a GPU"), (12, "z\n", "")]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_skipped_block_gives_a_reason(path):
    unexplained = [line for line, _, reason in python_blocks(path) if reason == ""]
    assert not unexplained, (
        f"{path.name}: a skipped block needs '<!-- readme-test: skip (reason) -->' (lines {unexplained})"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("lightning")
    blocks = [(line, code) for line, code, reason in python_blocks(path) if reason is None]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path)],
        input=json.dumps(blocks),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"
