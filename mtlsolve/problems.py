"""Built-in benchmark problems, generated in code (problems.md §1–§3).

Each objective takes a torch tensor of decision variables with any leading
batch shape and returns the task losses stacked in the last dimension.
"""

from __future__ import annotations

import math

#: The two-task toy landscape's Pareto-front height and the published start points.
TOY_FRONT_X2 = -8.3552
TOY_STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
TOY_SCALES = {"none": (1.0, 1.0), "nash": (0.1, 1.0), "samsung": (0.5, 0.5)}


def toy(x, scale: str = "none"):
    """The two-task toy landscape of CAGrad / Nash-MTL / FAMO (problems.md §1); x has shape (..., 2)."""
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
    """Fonseca–Fleming (VLMOP2, problems.md §2): non-convex front; x has shape (..., n)."""
    import torch

    c = 1.0 / math.sqrt(x.shape[-1])
    return torch.stack((1 - torch.exp(-((x - c) ** 2).sum(-1)), 1 - torch.exp(-((x + c) ** 2).sum(-1))), dim=-1)


def fonseca_convex(x):
    """The convex companion of Fonseca–Fleming (problems.md §2): front √f1 + √f2 = 1."""
    c = 1.0 / math.sqrt(x.shape[-1])
    import torch

    return torch.stack((((x - c) ** 2).sum(-1) / 4, ((x + c) ** 2).sum(-1) / 4), dim=-1)


def linear_regression_data(tasks: int = 100, samples: int = 1000, features: int = 20, seed: int = 0):
    """The many-task linear regression of FAMO's demo (problems.md §3): X (samples x features), Y (samples x tasks)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(samples, features, generator=gen), torch.randn(samples, tasks, generator=gen)
