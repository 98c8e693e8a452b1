"""Train a small two-task MLP with mtlsolve's training-loop adapter (CPU, well under a minute).

    python examples/plain_loop.py                     # ls, uw, famo and mgda, one after the other
    python examples/plain_loop.py --solver upgrad     # any registered solver name
    python examples/plain_loop.py --solver mgda --epochs 2

The loop is the same for every method: the adapter picks the cheapest path
from what the solver needs (one backward of a weighted loss, the Gramian of
the per-task gradients, or the full matrix), writes the combined update into
``.grad``, and ``adapter.step`` steps the optimiser and drives the solver's
own hooks (FAMO's post-step update needs the closure; DWA needs end_epoch).
"""

from __future__ import annotations

import argparse
import time

import torch

import mtlsolve
from mtlsolve.adapters import MultiTaskBackward


class TwoTaskMLP(torch.nn.Module):
    def __init__(self, d_in: int = 8, width: int = 32) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(d_in, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU()
        )
        self.heads = torch.nn.ModuleList([torch.nn.Linear(width, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h).squeeze(-1) for head in self.heads]


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related regression targets on different scales (task 2's loss is about 25x task 1's)."""
    x = torch.randn(n, 8, generator=gen)
    a = torch.linspace(-1.0, 1.0, 8)
    y1 = torch.sin(x @ a)
    y2 = 5.0 * torch.tanh(x[:, :4].sum(1)) + 0.1 * torch.randn(n, generator=gen)
    return x, torch.stack([y1, y2], dim=1)


def task_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    preds = model(x)
    return torch.stack([torch.nn.functional.mse_loss(p, y[:, i]) for i, p in enumerate(preds)])


def train(solver_name: str, epochs: int = 6, batch: int = 64) -> None:
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = make_data(2048, gen)
    x_test, y_test = make_data(512, gen)
    torch.manual_seed(0)
    model = TwoTaskMLP()
    solver = mtlsolve.get(solver_name)
    adapter = MultiTaskBackward(solver, shared=model.trunk, max_norm=10.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)  # adapter.step adds learnable solver parameters
    start = time.perf_counter()
    print(f"\n== {solver_name} ({type(solver).__name__}, path: {adapter.path})")
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x, y = x_train[idx], y_train[idx]
            diagnostics = adapter.backward(task_losses(model, x, y))
            adapter.step(optimizer, closure=lambda: task_losses(model, x, y))
        adapter.end_epoch()
        with torch.no_grad():
            test = task_losses(model, x_test, y_test).tolist()
        extra = ""
        if diagnostics.weights is not None:
            extra += "  weights " + " ".join(f"{w:.3f}" for w in diagnostics.weights)
        if diagnostics.cosines is not None:  # figures from the Gramian of the last step
            norms = " ".join(f"{g:.3f}" for g in diagnostics.grad_norms)
            extra += f"  cos(g1, g2) {diagnostics.cosines[0, 1]:+.3f}  |g_i| {norms}"
            extra += f"  cond {diagnostics.condition_number:.1f}"
        print(f"epoch {epoch + 1}: test loss task 1 {test[0]:.4f}  task 2 {test[1]:.4f}{extra}")
    print(f"({time.perf_counter() - start:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", action="append", help="solver name (repeatable); default: ls, uw, famo, mgda")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    names = args.solver or ["ls", "uw", "famo", "mgda"]
    for name in names:
        try:
            train(name, epochs=args.epochs)
        except mtlsolve.UnknownSolverError as exc:
            print(f"\n== {name}: not available here ({exc})")


if __name__ == "__main__":
    main()
