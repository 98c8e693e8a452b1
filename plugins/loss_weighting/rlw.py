"""Random loss weighting (docs/methods.md#rlw)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from mtlsolve.solver import Need, Weighting
from mtlsolve.system import GradientSystem
from mtlsolve.validation import one_of, optional_seed

DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


@attrs.define(kw_only=True, eq=False)
class RandomLossWeighting(Weighting):
    """RLW, Lin, Ye, Zhang, Tsang, "Reasonable Effectiveness of Random Weighting", TMLR 2022
    (arXiv 2111.10603), Algorithm 1 / Eq. (4): fresh weights every step, w = softmax(ε) with
    ε ~ N(0, I_m) (``distribution="normal"``, LibMTL and nash-mtl), ε ~ U(0, 1)^m
    (``"uniform"``), or w ~ Dirichlet(1) (``"dirichlet"``), three of the samplers the paper
    studies. The weights lie on the simplex and are strictly positive; the draws come from
    the solver's generator (``seed``), whose state is checkpointed.
    """

    name: ClassVar[str] = "rlw"
    aliases: ClassVar[Mapping[str, Mapping[str, Any]]] = {"random": {}, "random_loss_weighting": {}}
    family: ClassVar[str] = "LW"
    needs: ClassVar[frozenset[Need]] = frozenset()
    properties: ClassVar[frozenset[str]] = frozenset({"positive_homogeneous", "linear", "simplex_weights"})
    randomized: ClassVar[bool] = True
    paper: ClassVar[str] = "Lin, Ye, Zhang, Tsang — TMLR 2022 — arXiv 2111.10603"
    state_schema: ClassVar[Mapping[str, Any]] = {"rng": None}  # the generator's state

    distribution: str = attrs.field(default="normal", validator=one_of(*DISTRIBUTIONS))
    seed: int | None = attrs.field(default=None, validator=optional_seed)

    def weights(self, system: GradientSystem) -> tuple[np.ndarray, Mapping[str, Any]]:
        gen = self._rng(self.seed)
        m = system.m
        if self.distribution == "dirichlet":
            w = gen.dirichlet(np.ones(m))
        else:
            eps = gen.standard_normal(m) if self.distribution == "normal" else gen.random(m)
            w = np.exp(eps - eps.max())
            w = w / w.sum()
        self._save_rng(gen)
        return w, {}
