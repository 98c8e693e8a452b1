"""Inner m x m problems: a fast kernel (numba, ``cache=True``) and a cvxpy reference
formulation of the same problem side by side in each module. cvxpy and numba are
imported only when a kernel is first used."""
