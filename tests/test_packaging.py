"""Packaging: a regular (non-editable) install works, maps the namespaced folders, and
installs no top-level ``plugins`` or ``adapters`` module; the README example runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_regular_install_has_namespaced_packages_and_entry_points(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    top_level = {p.name for p in target.iterdir()}
    assert "mtlsolve" in top_level
    assert not {"plugins", "adapters", "tests"} & top_level
    assert (target / "mtlsolve" / "plugins" / "gramian" / "__init__.py").exists()
    assert (target / "mtlsolve" / "adapters" / "__init__.py").exists()
    script = (
        "import mtlsolve, mtlsolve.adapters;"
        "print(mtlsolve.__file__);"
        "print(mtlsolve.registry.resolve('ls')[0].distribution);"
        "print(len(mtlsolve.available()))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0].startswith(str(target))
    assert out[1] == "mtlsolve"
    assert int(out[2]) >= 8


def test_editable_install_points_at_this_checkout():
    import mtlsolve
    import mtlsolve.adapters
    import mtlsolve.plugins

    assert Path(mtlsolve.__file__).parent == ROOT / "mtlsolve"
    assert Path(mtlsolve.plugins.__file__).parent == ROOT / "plugins"
    assert Path(mtlsolve.adapters.__file__).parent == ROOT / "adapters"


def test_readme_quick_start_runs():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Quick start\s+```python\n(.*?)```", readme, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first = proc.stdout.splitlines()[0]
    assert first == "[0.2 0.4] [0.6 0.4]"
