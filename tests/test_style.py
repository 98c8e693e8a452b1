"""The repository passes ruff's lint rules and is ruff-formatted (configuration: ``[tool.ruff]`` in
pyproject.toml). Fix with ``ruff check --fix .`` and ``ruff format .`` from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ruff", reason='ruff is not installed: pip install -e ".[dev]"')

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check():
    proc = ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}{proc.stderr}"


def test_ruff_format():
    proc = ruff("format", "--no-cache", "--check", ".")
    assert proc.returncode == 0, f"ruff format would reformat:\n{proc.stdout}{proc.stderr}"
