"""Tools built on the stages: `convergence check` and its baselines, `bench`, `verify` and
the pytest plugin for sampler authors."""
