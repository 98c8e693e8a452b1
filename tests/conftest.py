"""Shared test set-up. With pytest's default import mode this folder is on ``sys.path``, so test
modules in every subfolder import the helpers here (e.g. ``torchjd_reference``)."""

from fnmatch import fnmatch

import pytest
from hypothesis import HealthCheck, settings

# The long fuzz run of tests/test_fuzz.py (20,000 systems over all solvers):
#     pytest tests/test_fuzz.py --hypothesis-profile=fuzz
# test_fuzz.py spreads the total over the solvers itself; here the profile only fixes the run's
# reproducibility (derandomized, no example database, no deadline) for any test it reaches.
settings.register_profile(
    "fuzz",
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fuzz: hypothesis fuzzing of every solver (tests/test_fuzz.py); long with --hypothesis-profile=fuzz"
    )


# ------------------------------------------------------------------ the fast tier
# `pytest -m "not slow"` keeps every kind of check and skips the tests marked `slow`: those marked in
# their files, and the ones listed here (node ids, fnmatch patterns).
#: parametrized tests whose first case alone is in the fast tier: the others add sizes, families or settings
FIRST_CASE_ONLY = (
    "tests/kernels/test_cagrad_kernel.py::test_full_rank_matches_reference",
    "tests/kernels/test_cagrad_kernel.py::test_rank_deficient_matches_reference",
    "tests/kernels/test_cone_projection.py::test_full_rank_matches_reference",
    "tests/kernels/test_cone_projection.py::test_rank_deficient_matches_reference",
    "tests/kernels/test_cone_projection.py::test_general_u_matches_reference",
    "tests/kernels/test_nash_kernel.py::test_full_rank_matches_reference",
    "tests/kernels/test_nash_kernel.py::test_rank_deficient_matches_reference",
    "tests/kernels/test_simplex_qp.py::test_full_rank_matches_reference",
    "tests/kernels/test_simplex_qp.py::test_rank_deficient_matches_reference",
    "tests/kernels/test_simplex_qp.py::test_linear_term_matches_reference",
    "tests/plugins/test_epo.py::test_convex_companion",
    "tests/plugins/test_pmgda.py::test_convex_companion_ends_on_the_ray",
    "tests/plugins/test_pareto_scalarization.py::test_convex_companion_minimisers",
    # the fuzzer's default run; every solver is fuzzed by the conformance suite's hypothesis tests
    "tests/test_fuzz.py::test_fuzz",
)
#: tests outside the fast tier: long training runs and end-to-end runs, extra hard-system families
SLOW = (
    # 3 500 Adam steps of every method on the toy landscape (the coverage check stays)
    "tests/test_toy_landscape.py::test_ls_like_methods_reach_the_weighted_sum_minimiser_or_stall*",
    "tests/test_toy_landscape.py::test_pareto_methods_end_on_the_front*",
    "tests/test_toy_landscape.py::test_fairgrad_alpha_one_follows_nash_mtl",
    "tests/test_toy_landscape.py::test_other_methods_descend*",
    "tests/test_toy_landscape.py::test_aligned_mtl_samsung_reaches_the_middle",
    # long TorchJD comparisons; tests/plugins/test_{mgda,cagrad,nash_mtl}.py::test_matches_torchjd,
    # test_pcgrad_two_tasks_solver and the FairGrad kernel's cvxpy reference stay in the fast tier
    "tests/test_torchjd_parity.py::test_fairgrad*",
    "tests/test_torchjd_parity.py::test_nash_mtl",
    "tests/test_torchjd_parity.py::test_mgda",
    "tests/test_torchjd_parity.py::test_cagrad",
    "tests/test_torchjd_parity.py::test_pcgrad_shared_orders",
    # whole `mtlsolve bench` runs (the other bench tests run its parts); MNIST read from its CSV
    "tests/test_bench.py::test_tiny_run_writes_tables_json_and_pngs*",
    "tests/test_cli.py::test_bench_is_wired",
    "tests/test_problems.py::test_multimnist_structure",
    # Pareto populations trained on the convex companion problem (EPO, PMGDA, the scalarisations keep one run)
    "tests/plugins/test_hvgrad.py::test_population_on_the_convex_companion",
    "tests/plugins/test_pmtl.py::test_population_on_the_convex_companion",
    # affinity propagation against scikit-learn on a full clustering run
    "tests/strategies/test_stgu.py::test_affinity_propagation_kernel_matches_sklearn",
    # two ranks spawned and trained against one process
    "tests/adapters/test_ddp.py::test_two_ranks_equal_one_process_on_the_concatenated_batch*",
    # hard systems: every solver keeps the families gaussian, dependent and hull_zero, and its
    # permutation equivariance (the conformance suite checks every claimed property of every solver)
    "tests/test_robustness.py::test_no_silent_wrong_answer[[]*-scaled]",
    "tests/test_robustness.py::test_no_silent_wrong_answer[[]*-mixed_scales]",
    "tests/test_robustness.py::test_no_silent_wrong_answer[[]*-conditioned]",
    "tests/test_robustness.py::test_no_silent_wrong_answer[[]*-opposed]",
    "tests/test_robustness.py::test_no_silent_wrong_answer[[]*-zero_rows]",
    "tests/test_robustness.py::test_no_silent_wrong_answer[[]*-tiny_rows]",
    "tests/test_robustness.py::test_claimed_comparative_property[[]*-positive_homogeneous]",
    "tests/test_robustness.py::test_claimed_comparative_property[[]*-scale_invariant]",
    "tests/test_robustness.py::test_claimed_comparative_property[[]*-linear]",
    "tests/kernels/test_simplex_qp.py::test_kkt_certified_on_hard_families[[]*float32*]",
    "tests/kernels/test_cagrad_kernel.py::test_certified_on_hard_families[[]*float32*]",
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    seen = set()
    for item in items:
        function = item.nodeid.split("[", 1)[0]
        extra_case = function in FIRST_CASE_ONLY and function in seen
        seen.add(function)
        if extra_case or any(fnmatch(item.nodeid, pattern) for pattern in SLOW):
            item.add_marker(pytest.mark.slow)
