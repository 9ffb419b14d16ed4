"""Physics: operators, noise models and per-modality adapters.

Importing this package imports every modality module so their operators register for the shared
adjointness test.
"""

from sciprior.modalities import base, ct, mri, noise  # noqa: F401
