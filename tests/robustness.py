"""The hard-system generators and checks now live in :mod:`mtlsolve.testing.robustness`, importable
by a plugin's own tests; this name keeps ``import robustness`` working for tests on ``sys.path``."""

from mtlsolve.testing.robustness import *  # noqa: F403
