"""Shared test set-up. With pytest's default import mode this folder is on ``sys.path``, so test
modules in every subfolder import the helpers here (e.g. ``torchjd_reference``)."""

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
