"""The built-in solvers, grouped by family; each family is a plugin registered through
the ``mtlsolve`` entry-point group in pyproject.toml, exactly like a third-party package."""
