"""One training step through the adapter, side by side with a plain sum, a naive loop and TorchJD 0.18.0.

Run:  .venv/bin/python asv_benchmarks/compare_adapters.py [--quick] [--repeats R] [--threads T] [--methods a,b]

One step = zero the gradients (set to None), forward pass, then one of:

* ``plain sum`` — ``sum(losses).backward()`` (the floor of any loss weighting);
* ``naive loop`` — m calls ``torch.autograd.grad(L_i, shared + head_i, retain_graph=True)``, the
  shared gradients stacked into G (m x n), ``d = G.mean(0)`` written to the shared ``.grad`` and each
  head's gradient to its own ``.grad``; ``naive loop + GGᵀ`` also forms K = G Gᵀ (what a Gramian
  solver needs on top; informative, not part of the targets);
* ``tj autojac X`` — ``torchjd.autojac.mtl_backward(losses, features=H)`` then
  ``jac_to_grad(trunk.parameters(), X)`` with X = ``UPGrad()`` or ``Mean()``;
  ``tj autojac UPGrad (gramian)`` passes ``optimize_gramian_computation=True`` (the per-block Gramian,
  no concatenated Jacobian);
* ``tj autogram UPGrad`` — TorchJD's Gramian engine: ``Engine(trunk, batch_dim=None)``,
  ``K = engine.compute_gramian(losses)``, ``w = UPGradWeighting()(K)``, ``losses.backward(w)``
  (heads then get w_i ∇L_i rather than ∇L_i). ``batch_dim=None`` because the m losses are batch
  means; ``batch_dim=0`` on the B x m per-sample losses gives the same m x m Gramian (summing the
  (Bm)² one's blocks) but took 0.2 s to 27 s a step here, so it is left out;
* ``ours S`` — ``MultiTaskBackward(S, shared=model.trunk).backward(losses)`` for S = ``ls`` (loss path),
  ``upgrad``, ``mgda``, ``pcgrad`` (Gramian path) and ``graddrop`` (matrix path; not in ``--quick``).
  ``ours upgrad batched=False`` forces the adapter's one-backward-per-task engine instead of the
  batched (vmap) one: informative, not part of the targets.

No optimiser step is taken by anyone. Trunks (shared parameters), with m linear heads of 10 classes
and a cross-entropy loss per task, batch 32:

* ``mlp``: 784 → 512 → 256 (ReLU), 533k shared parameters, input 1x28x28 flattened;
* ``cnn``: three 3x3 conv layers (3→16→32→64 channels, ReLU, 2x2 max-pool after each) on 3x32x32 and a
  1024 → 128 linear layer, 155k shared parameters.

Timing: in one process, each configuration is built once and run once untimed (numba loading, the
batched engine's first try), then ``R`` rounds in which every method of the cell runs one step, in a
rotating order; the tables report the median. ``torch.set_num_threads(--threads)``, default 1.

Memory: ``tracemalloc`` does not see torch's CPU buffers and the process-wide ``ru_maxrss`` only ever
grows, so each configuration is measured in a forked child of a process that has imported
everything but built nothing: the child builds the model, runs one warm-up step, then resets the
kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``), reads ``VmRSS`` and runs ``k`` steps; the
extra peak is ``VmHWM - VmRSS`` (``/proc/self/status``): what a steady-state step adds on top of the
model, its data and whatever the warm-up left resident (the previous step's ``.grad`` included, the
same for every method). glibc's mmap threshold is pinned to 128 KiB
in the child (``mallopt``), so every tensor buffer larger than that is mapped on allocation and
unmapped on free, and freed memory cannot hide later peaks; ``malloc_trim(0)`` runs before the mark
is reset. Linux only; elsewhere the memory columns read "n/a". Forking costs a few ms, where a fresh
interpreter per configuration would cost ~4 s of imports.

Targets (PASS/MISS per target), Gramian solvers = upgrad, mgda, pcgrad:
1. Gramian solver step ≤ 0.5x TorchJD's autojac UPGrad step, every cell;
2. Gramian solver step no slower than the naive loop at m ∈ {10, 40}, both trunks;
3. Gramian solver extra peak memory ≤ 0.5x TorchJD's autojac UPGrad, every cell;
4. loss-only solver (ls) step ≤ 1.1x the plain sum, every cell.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.metadata
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported by asv
from compare import interleaved, limit_threads, print_verdicts, table  # noqa: E402 - the timing protocol and table format of compare.py

M_VALUES = (2, 10, 40)
BATCH = 32
CLASSES = 10
TRUNKS = ("mlp", "cnn")
GRAMIAN = ("upgrad", "mgda", "pcgrad")
LOSS_ONLY = ("ls",)
#: ours: name -> (solver config, MultiTaskBackward keyword arguments)
OURS = {
    "ls": ({"name": "ls"}, {}),
    "upgrad": ({"name": "upgrad"}, {}),
    "mgda": ({"name": "mgda"}, {}),
    "pcgrad": ({"name": "pcgrad", "seed": 0}, {}),
    "upgrad batched=False": ({"name": "upgrad"}, {"batched": False}),
    "graddrop": ({"name": "graddrop", "on": "params", "seed": 0}, {}),
}
METHODS = (
    "plain sum",
    "naive loop",
    "naive loop + GGᵀ",
    "tj autojac Mean",
    "tj autojac UPGrad",
    "tj autojac UPGrad (gramian)",
    "tj autogram UPGrad",
) + tuple(f"ours {k}" for k in OURS)
QUICK_SKIP = ("ours graddrop",)
TJ_REF = "tj autojac UPGrad"


# ------------------------------------------------------------------------------------ models
def make_model(trunk: str, m: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if trunk == "mlp":
        body = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU())
        width, shape = 256, (BATCH, 1, 28, 28)
    elif trunk == "cnn":
        body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
        )
        width, shape = 128, (BATCH, 3, 32, 32)
    else:
        raise ValueError(trunk)
    model = nn.Module()
    model.trunk = body
    model.heads = nn.ModuleList(nn.Linear(width, CLASSES) for _ in range(m))
    x = torch.randn(shape)
    y = torch.randint(0, CLASSES, (m, BATCH))
    return model, x, y


def make_step(trunk: str, m: int, method: str) -> Callable[[], None]:
    """A zero-argument call running one training step of ``method`` on a fresh (trunk, m) model."""
    import torch
    import torch.nn.functional as F

    model, x, y = make_model(trunk, m)
    shared = list(model.trunk.parameters())
    heads = [list(h.parameters()) for h in model.heads]

    def forward():
        model.zero_grad(set_to_none=True)
        H = model.trunk(x)
        return H, [F.cross_entropy(head(H), y[i]) for i, head in enumerate(model.heads)]

    if method == "plain sum":

        def step():
            _, losses = forward()
            sum(losses).backward()
    elif method.startswith("naive loop"):
        gramian = method.endswith("GGᵀ")

        def step():
            _, losses = forward()
            rows = []
            for i, loss in enumerate(losses):
                g = torch.autograd.grad(loss, shared + heads[i], retain_graph=i + 1 < m)
                rows.append(torch.cat([t.reshape(-1) for t in g[: len(shared)]]))
                for p, t in zip(heads[i], g[len(shared) :]):
                    p.grad = t
            G = torch.stack(rows)
            if gramian:
                G @ G.T
            d = G.mean(0)
            offset = 0
            for p in shared:
                p.grad = d[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    elif method.startswith("tj autojac"):
        from torchjd.aggregation import Mean, UPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = Mean() if method.endswith("Mean") else UPGrad()
        optimize = method.endswith("(gramian)")

        def step():
            H, losses = forward()
            mtl_backward(losses, features=H)
            jac_to_grad(shared, aggregator, optimize_gramian_computation=optimize)
    elif method == "tj autogram UPGrad":
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine

        engine = Engine(model.trunk, batch_dim=None)
        weighting = UPGradWeighting()

        def step():
            _, losses = forward()
            L = torch.stack(losses)
            K = engine.compute_gramian(L)
            L.backward(weighting(K))
    elif method.startswith("ours "):
        from mtlsolve.adapters import MultiTaskBackward

        config, options = OURS[method[5:]]
        adapter = MultiTaskBackward(config, shared=model.trunk, **options)

        def step():
            _, losses = forward()
            adapter.backward(torch.stack(losses))
    else:
        raise ValueError(method)
    step.model = model  # lets a caller read the .grad a step wrote
    return step


# ------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_growth_mib(trunk: str, m: int, method: str, steps: int) -> float | str:
    """Extra peak RSS (MiB) of ``steps`` steady-state steps, measured in a forked child (see module doc)."""
    if not (sys.platform.startswith("linux") and hasattr(os, "fork")):
        return "n/a"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, disables the dynamic threshold
            libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
            step = make_step(trunk, m, method)
            step()
            gc.collect()
            libc.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status_kib("VmRSS")
            for _ in range(steps):
                step()
            msg = f"{(_status_kib('VmHWM') - base) / 1024:.3f}"
        except BaseException as exc:  # noqa: BLE001 - reported in the table, never raised in the child
            msg = f"{type(exc).__name__}: {str(exc)[:60]}"
        os.write(write_end, msg.encode())
        os.close(write_end)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        msg = f.read()
    os.waitpid(pid, 0)
    try:
        return float(msg)
    except ValueError:
        return msg or "child died"


# ------------------------------------------------------------------------------------ report
def ratio(a: Any, b: Any) -> float | str:
    return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else "—"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and memory steps, no graddrop")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per cell (default 21, quick 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--methods", default="", help="comma-separated subset of the method names below")
    args = parser.parse_args(argv)
    repeats = args.repeats or (7 if args.quick else 21)
    mem_steps = 1 if args.quick else 3
    chosen = [s.strip() for s in args.methods.split(",") if s.strip()]
    methods = (
        [k for k in METHODS if k in chosen] if chosen else [k for k in METHODS if not (args.quick and k in QUICK_SKIP)]
    )
    warnings.filterwarnings("ignore")

    import torch
    import torchjd.aggregation  # noqa: F401 - imported before forking, so children only build
    import torchjd.autogram  # noqa: F401
    import torchjd.autojac  # noqa: F401

    import mtlsolve.adapters  # noqa: F401

    limit_threads(args.threads)
    cells = [(t, m) for t in TRUNKS for m in M_VALUES]
    cols = [f"{t} m={m}" for t, m in cells]
    print(
        f"# one training step: mtlsolve adapter vs TorchJD {importlib.metadata.version('torchjd')}, "
        f"plain sum and naive loop (torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
        f"batch {BATCH}, median of {repeats} interleaved rounds; memory over {mem_steps} steps"
        f"{', quick' if args.quick else ''})"
    )
    for t in TRUNKS:
        model, _, _ = make_model(t, 1)
        print(f"#   {t} trunk: {sum(p.numel() for p in model.trunk.parameters()):,} shared parameters")
    t_start = time.perf_counter()

    mem: dict[tuple[str, str], Any] = {}  # before any timing: children fork from an import-only parent
    for (t, m), c in zip(cells, cols):
        for k in methods:
            mem[(k, c)] = peak_growth_mib(t, m, k, mem_steps)
        print(f"  memory {c}: done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)

    ms: dict[tuple[str, str], Any] = {}
    for (t, m), c in zip(cells, cols):
        fns = {}
        for k in methods:
            try:
                fns[k] = make_step(t, m, k)
                fns[k]()
            except Exception as exc:  # noqa: BLE001 - reported in the table
                ms[(k, c)] = f"{type(exc).__name__}: {str(exc)[:40]}"
                fns.pop(k, None)
        for k, v in interleaved(fns, repeats).items():
            ms[(k, c)] = 1e3 * v
        print(f"  timing {c}: done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        del fns
        gc.collect()

    ours = [k for k in methods if k.startswith("ours ")]
    get = lambda d: lambda r, c: d.get((r, c), "—")  # noqa: E731
    table("ms per step (median)", methods, cols, get(ms))
    table("extra peak memory per step (MiB above the steady state)", methods, cols, get(mem))
    table(f"step time ours / {TJ_REF}", ours, cols, lambda r, c: ratio(ms.get((r, c)), ms.get((TJ_REF, c))))
    table(
        "step time ours / tj autojac Mean",
        ours,
        cols,
        lambda r, c: ratio(ms.get((r, c)), ms.get(("tj autojac Mean", c))),
    )
    table(
        "step time ours / tj autogram UPGrad",
        ours,
        cols,
        lambda r, c: ratio(ms.get((r, c)), ms.get(("tj autogram UPGrad", c))),
    )
    table("step time ours / naive loop", ours, cols, lambda r, c: ratio(ms.get((r, c)), ms.get(("naive loop", c))))
    table(
        "step time loss-only / plain sum",
        [k for k in ours if k[5:] in LOSS_ONLY],
        cols,
        lambda r, c: ratio(ms.get((r, c)), ms.get(("plain sum", c))),
    )
    table(f"extra peak memory ours / {TJ_REF}", ours, cols, lambda r, c: ratio(mem.get((r, c)), mem.get((TJ_REF, c))))

    def check(text: str, rows: list[str], cells_: list[str], num: dict, den: str, limit: float) -> None:
        misses, checked = [], 0
        for r in rows:
            for c in cells_:
                x = ratio(num.get((r, c)), num.get((den, c)))
                if not isinstance(x, float):
                    continue
                checked += 1
                if x > limit:
                    misses.append(f"{r[5:]}@{c}={x:.2f}")
        ok = checked > 0 and not misses
        detail = ", ".join(misses) or (f"all ≤ {limit} ({checked} cells)" if checked else "not measured")
        verdicts.append((text, ok, detail))

    verdicts: list[tuple[str, bool, str]] = []
    gram = [f"ours {k}" for k in GRAMIAN if f"ours {k}" in methods]
    big = [c for (t, m), c in zip(cells, cols) if m >= 10]
    check(f"Gramian solver step ≤ 0.5x {TJ_REF}", gram, cols, ms, TJ_REF, 0.5)
    check("Gramian solver step ≤ naive loop at m ∈ {10, 40}", gram, big, ms, "naive loop", 1.0)
    check(f"Gramian solver extra peak memory ≤ 0.5x {TJ_REF}", gram, cols, mem, TJ_REF, 0.5)
    check(
        "loss-only solver step ≤ 1.1x plain sum",
        [f"ours {k}" for k in LOSS_ONLY if f"ours {k}" in methods],
        cols,
        ms,
        "plain sum",
        1.1,
    )
    print_verdicts(verdicts, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
