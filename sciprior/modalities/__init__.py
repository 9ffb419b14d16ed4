"""Physics: operators, noise models and per-modality adapters.

Importing this package imports every modality module so their operators register for the shared
adjointness test.
"""

from sciprior.modalities import adapter, base, ct, ct_adapter, mri, mri_adapter, noise, volume  # noqa: F401
