"""The toy microscope's operator for the shared adjoint test."""

from sciprior.physics.generic import Convolution, gaussian_kernel
from sciprior.physics.testing import register_example

register_example("toy_psf_blur")(lambda: Convolution(gaussian_kernel(9, 1.5), (1, 20, 16)))
