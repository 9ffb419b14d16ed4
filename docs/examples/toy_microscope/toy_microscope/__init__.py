"""A toy microscope for sciprior: a greyscale image blurred by a Gaussian point-spread function plus Gaussian noise.

Everything a modality is, in one package: the adapter (file -> Problem -> file), the training reader, a bundled
sample (a real light-microscopy image of a cell shipped by scikit-image, nothing downloaded) and the examples for
the adjoint test. The forward model and the noise are sciprior's generic ones (``Convolution``, ``Gaussian``).
"""

from __future__ import annotations

from pathlib import Path

import skimage.data

from sciprior.modalities import Modality
from toy_microscope.adapter import ToyMicroscope
from toy_microscope.data import ToyImages


def cell_png() -> Path:
    """``cell.png`` of scikit-image: a cell floating in saline, 550 x 660 grey levels (light microscopy)."""
    return Path(skimage.data.__file__).parent / "cell.png"


MODALITY = Modality(
    name="toy",
    adapter=ToyMicroscope,
    readers={"images": ToyImages},
    samples={"toy_cell": cell_png},
    examples="toy_microscope.examples",
    description="a toy microscope: Gaussian blur and noise on greyscale images (PNG, NPY)",
)

__all__ = ["MODALITY", "ToyImages", "ToyMicroscope", "cell_png"]
