"""File formats and file handling that more than one modality uses (no torch models, no modality names).

- :mod:`~sciprior.io.atomic`: the one atomic writer (temp file, rename), directory commits, stale temp cleanup;
- :mod:`~sciprior.io.paths`: inputs and training paths (files, globs, ``sample:``, ``pkg:``), file kinds by content;
- :mod:`~sciprior.io.grid`: volume geometry of patient-axis images (LPS orientation, slices, resizing, affines);
- :mod:`~sciprior.io.nifti`: the NIfTI reader and writer;
- :mod:`~sciprior.io.dicom`: DICOM series -> array + affine (generic: rescale, padding, geometry).

This package imports only :mod:`~sciprior.io.atomic` eagerly (what most callers need).
"""

from sciprior.io.atomic import FileContent, atomic_write, write_text_atomic

__all__ = ["FileContent", "atomic_write", "write_text_atomic"]
