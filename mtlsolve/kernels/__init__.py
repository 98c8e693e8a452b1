"""Inner m x m problems: a fast kernel (numba, compiled by :func:`mtlsolve.kernels._numba.kernel`)
and a cvxpy reference formulation of the same problem side by side in each module; the dense
linear algebra they share (Cholesky updates, the active-set QP core) is in
:mod:`mtlsolve.kernels._dense`. cvxpy and numba are imported only when a kernel is first used."""
