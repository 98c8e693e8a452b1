"""asv benchmarks: solver cost per call next to the floor (K = GGᵀ and d = wᵀG) on the same matrix.

Run offline against the current environment:  asv run --python=same --quick
"""

import numpy as np

import mtlsolve

SOLVERS = mtlsolve.available()


class Combine:
    """Time and peak memory of one solver call on a float32 m x n matrix."""

    params = (SOLVERS, [2, 10, 40], [100_000, 1_000_000])
    param_names = ["solver", "m", "n"]
    timeout = 120

    def setup(self, name, m, n):
        rng = np.random.default_rng(0)
        self.G = rng.standard_normal((m, n), dtype=np.float32)
        self.losses = rng.uniform(0.5, 2.0, m)
        try:
            self.solver = mtlsolve.get(name)
        except mtlsolve.InvalidConfigError:
            raise NotImplementedError(f"{name} needs required arguments")  # asv skips the cell
        self.solver(self.G, losses=self.losses)  # compile kernels, fill caches

    def time_call(self, name, m, n):
        self.solver(self.G, losses=self.losses)

    def peakmem_call(self, name, m, n):
        self.solver(self.G, losses=self.losses)


class Floor:
    """The linear-algebra floor of a Gramian method: K = GGᵀ and d = wᵀG."""

    params = ([2, 10, 40], [100_000, 1_000_000])
    param_names = ["m", "n"]

    def setup(self, m, n):
        rng = np.random.default_rng(0)
        self.G = rng.standard_normal((m, n), dtype=np.float32)
        self.w = np.full(m, 1.0 / m, dtype=np.float32)

    def time_floor(self, m, n):
        self.G @ self.G.T
        self.w @ self.G


def timeraw_import():
    return "import mtlsolve"


def timeraw_list_solvers():
    return "import mtlsolve; mtlsolve.available()"


class Lookup:
    def setup(self):
        mtlsolve.available()

    def time_get_by_alias(self):
        mtlsolve.get("Mean")
