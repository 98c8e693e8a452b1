"""The example third-party plugin (examples/mtlsolve-example-plugin) is found through its entry point."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

import mtlsolve

DISTRIBUTION = "mtlsolve-example-plugin"

try:
    importlib.metadata.distribution(DISTRIBUTION)
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
    pytestmark = pytest.mark.skip(
        reason=f"{DISTRIBUTION} is not installed: pip install -e examples/mtlsolve-example-plugin"
    )


def test_entry_point_is_declared_in_the_mtlsolve_group():
    eps = [ep for ep in importlib.metadata.entry_points(group="mtlsolve") if ep.dist.name == DISTRIBUTION]
    assert [(ep.name, ep.value) for ep in eps] == [("example", "mtlsolve_example_plugin")]


def test_found_by_name_through_the_entry_point():
    entry, preset = mtlsolve.registry.resolve("normalized_sum")
    assert entry.distribution == DISTRIBUTION
    assert entry.plugin == "example"
    assert preset == {}
    assert "normalized_sum" in mtlsolve.available()
    solver = mtlsolve.get("Normalized-Sum")
    assert type(solver).__module__ == "mtlsolve_example_plugin.normalized_sum"
    assert mtlsolve.registry.resolve("unit_sum")[0] is entry
    assert type(mtlsolve.from_config({"name": "normalized_sum"})) is type(solver)


def test_normalized_sum_values():
    G = np.array([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    result = mtlsolve.get("normalized_sum")(G)
    # sum of the unit vectors, computed directly; the zero row drops out
    expected = G[0] / 3 + G[1] / 2 + G[3] / np.sqrt(2)
    np.testing.assert_allclose(result.direction, expected, rtol=1e-12)
    np.testing.assert_allclose(result.weights, [1 / 3, 1 / 2, 0.0, 1 / np.sqrt(2)], rtol=1e-12)
    assert result.diagnostics["zero_rows"] == 1


def test_normalized_sum_runs_on_the_gramian_alone():
    G = np.array([[1.0, 2.0, 2.0], [-4.0, 0.0, 3.0]])
    w = mtlsolve.get("normalized_sum")(gramian=G @ G.T).weights
    np.testing.assert_allclose(w, [1 / 3, 1 / 5], rtol=1e-12)


def test_blocked_by_distribution_name(monkeypatch):
    monkeypatch.setenv("MTLSOLVE_BLOCK_PLUGINS", DISTRIBUTION)
    fresh = mtlsolve.registry.Registry()
    assert "normalized_sum" not in fresh.available()
    assert "ls" in fresh.available()
