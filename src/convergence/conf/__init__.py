"""Hydra configs shipped with the package (found as ``pkg://convergence.conf``)."""
