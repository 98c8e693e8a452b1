"""Shared test set-up. With pytest's default import mode this folder is on ``sys.path``, so test
modules in every subfolder import the helpers here (e.g. ``torchjd_reference``)."""
