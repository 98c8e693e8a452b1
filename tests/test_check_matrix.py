"""GradientSystem.check_matrix scans G in column blocks and still finds every NaN/Inf."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlsolve.system as system_module
from mtlsolve.errors import NonFiniteError
from mtlsolve.system import GradientSystem


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 20])
@pytest.mark.parametrize("backend", ["numpy", "torch", "torch_bf16"])
def test_every_position_is_checked(monkeypatch, block, backend):
    monkeypatch.setattr(system_module, "CHECK_BLOCK", block)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 11))  # 11 columns: the last block is partial for every block size
    GradientSystem(_as(base, backend)).check_matrix()
    for bad in (np.nan, np.inf, -np.inf):
        for i in range(3):
            for j in range(11):
                G = base.copy()
                G[i, j] = bad
                with pytest.raises(NonFiniteError):
                    GradientSystem(_as(G, backend)).check_matrix()


def test_empty_and_single_column_matrices(monkeypatch):
    monkeypatch.setattr(system_module, "CHECK_BLOCK", 2)
    GradientSystem(np.zeros((4, 0))).check_matrix()
    GradientSystem(torch.zeros(4, 0)).check_matrix()
    with pytest.raises(NonFiniteError):
        GradientSystem(torch.tensor([[1.0], [float("nan")], [2.0], [3.0]])).check_matrix()


def test_non_contiguous_views_are_checked():
    G = torch.randn(20, 6).T  # a transposed, non-contiguous 6 x 20 view
    GradientSystem(G).check_matrix()
    G[5, 19] = float("inf")
    with pytest.raises(NonFiniteError):
        GradientSystem(G).check_matrix()


def _as(G: np.ndarray, backend: str):
    if backend == "numpy":
        return G
    return torch.tensor(G, dtype=torch.bfloat16 if backend == "torch_bf16" else torch.float32)
