"""Δm% and hypervolume against the values of docs/problems.md (Fonseca problems, Δm%, hypervolume), inclusion–exclusion and Monte Carlo."""

import itertools

import numpy as np
import pytest

from mtlsolve.metrics import delta_m, hypervolume

CITYSCAPES_BASE = [74.01, 93.16, 0.0125, 27.77]
CITYSCAPES_HIGHER = [True, True, False, False]


@pytest.mark.parametrize(
    "metrics, expected",
    [
        ([75.18, 93.49, 0.0155, 46.77], 22.62),  # LS
        ([72.02, 92.85, 0.0140, 30.13], 5.88),  # UW
        ([75.41, 93.66, 0.0129, 35.02], 6.72),  # Nash-MTL
        ([74.54, 93.29, 0.0145, 32.59], 8.13),  # FAMO
        ([75.77, 93.69, 0.0133, 32.66], 5.27),  # Aligned-MTL
        ([75.73, 93.53, 0.0133, 31.53], 4.30),  # COST
    ],
)
def test_delta_m_cityscapes_worked_examples(metrics, expected):
    assert delta_m(metrics, CITYSCAPES_BASE, CITYSCAPES_HIGHER) == pytest.approx(expected, abs=0.005)


def test_delta_m_parity_and_task_weighting():
    assert delta_m([1.0, 2.0], [1.0, 2.0], [True, False]) == 0.0
    # task weighting averages within each task first: task 1 has one metric 10% worse,
    # task 2 has two metrics, one 10% better and one unchanged.
    per_task = delta_m([[0.9], [1.1, 1.0]], [[1.0], [1.0, 1.0]], [[True], [False, False]], weighting="task")
    assert per_task == pytest.approx(100 * (0.1 + 0.05) / 2)
    flat = delta_m([0.9, 1.1, 1.0], [1.0, 1.0, 1.0], [True, False, False])
    assert flat == pytest.approx(100 * (0.1 + 0.1 + 0.0) / 3)


def test_delta_m_rejects_bad_input():
    with pytest.raises(ValueError):
        delta_m([1.0], [0.0], [True])
    with pytest.raises(ValueError):
        delta_m([1.0, 2.0], [1.0], [True])
    with pytest.raises(ValueError):
        delta_m([1.0], [1.0], [True], weighting="rank")


def test_hypervolume_test_vectors():
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6)
    assert hypervolume([(1, 3), (2, 2), (3, 1), (2.5, 2.5), (5, 0)], (4, 4)) == pytest.approx(6)
    assert hypervolume([(0, 0.5, 0.5), (0.5, 0, 0.5)], (1, 1, 1)) == pytest.approx(0.375)
    p, r = np.array([0.2, 0.1, 0.5, 0.3]), np.array([1.0, 2.0, 1.0, 0.5])
    assert hypervolume([p], r) == pytest.approx(np.prod(r - p))
    assert hypervolume([], (1, 1)) == 0.0
    assert hypervolume([(1, 1)], (1, 2)) == 0.0  # does not strictly dominate r


@pytest.mark.parametrize(
    "front, k, expected",
    [
        ("fonseca", 5, 0.23006),
        ("fonseca", 11, 0.29270),
        ("convex", 5, 0.7265625),
        ("convex", 11, 0.7965),
    ],
)
def test_hypervolume_of_front_samples(front, k, expected):
    s = np.linspace(-1, 1, k)
    if front == "fonseca":
        f = np.stack([1 - np.exp(-((s - 1) ** 2)), 1 - np.exp(-((s + 1) ** 2))], axis=1)
    else:
        f = np.stack([(s - 1) ** 2 / 4, (s + 1) ** 2 / 4], axis=1)
    assert hypervolume(f, (1, 1)) == pytest.approx(expected, abs=5e-5)


def _inclusion_exclusion(points, r):
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * np.prod(np.clip(r - corner, 0, None))
    return total


@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_hypervolume_matches_inclusion_exclusion(d):
    rng = np.random.default_rng(d)
    for _ in range(20):
        points = rng.uniform(0, 1.2, (rng.integers(1, 8), d))
        r = np.ones(d)
        inside = points[(points < r).all(axis=1)]
        assert hypervolume(points, r) == pytest.approx(_inclusion_exclusion(inside, r), abs=1e-12)


def test_hypervolume_monte_carlo_3d():
    rng = np.random.default_rng(7)
    points = rng.uniform(0, 1, (30, 3))
    samples = rng.uniform(0, 1, (200_000, 3))
    dominated = (samples[:, None, :] >= points[None, :, :]).all(axis=2).any(axis=1)
    estimate, stderr = dominated.mean(), dominated.std() / np.sqrt(len(samples))
    assert abs(hypervolume(points, (1, 1, 1)) - estimate) < 4 * stderr


def test_hypervolume_rejects_bad_input():
    with pytest.raises(ValueError):
        hypervolume([(1, 2, 3)], (4, 4))
    with pytest.raises(ValueError):
        hypervolume([(np.nan, 1)], (4, 4))
