"""The physics contracts every modality and solver shares (no modality lives here).

- :mod:`~sciprior.physics.operator`: ``Operator``, ``LinearOperator`` and their algebra (adjoint, composition,
  sums, scaling, stacking), measurement helpers (``inner``, ``tmap``), ``operator_matrix``;
- :mod:`~sciprior.physics.generic`: identity, mask, block mean, convolution, dense matrix, weighted,
  real -> complex, finite differences;
- :mod:`~sciprior.physics.stack`: volumes measured slice by slice;
- :mod:`~sciprior.physics.noise`: likelihoods (Gaussian, Poisson, transmission Poisson, stacked);
- :mod:`~sciprior.physics.problem`: the ``Problem`` solvers consume, ``data_consistency``;
- :mod:`~sciprior.physics.testing`: ``check_adjoint`` and the registry of example operators
  (:mod:`~sciprior.physics.examples` holds the generic ones; the tests import them).
"""
