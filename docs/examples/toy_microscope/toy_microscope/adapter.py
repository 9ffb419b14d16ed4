"""The toy microscope's adapter: an image file -> a blurred, noisy measurement -> the reconstruction as PNG + NPY."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import Tensor

from sciprior.io.atomic import atomic_write
from sciprior.modalities.adapter import Context, IntensityMap, ModalityAdapter
from sciprior.physics.generic import Convolution, gaussian_kernel
from sciprior.physics.noise import Gaussian
from sciprior.physics.problem import Problem
from toy_microscope.images import image_size, read_grey


class ToyMicroscope(ModalityAdapter):
    """Blur by a Gaussian point-spread function (circular, so the operator is an exact FFT convolution), then
    Gaussian noise; the prior's domain maps intensities [0, 1] onto [-1, 1].

    Args:
        psf_sigma: standard deviation of the point-spread function, pixels.
        psf_size: side of the (square) point-spread function kernel, pixels (odd).
        sigma: noise std in the prior's units ([-1, 1] images).
        image_size: centre square crop resized to this side (None: the image as it is).
        sim_seed: seed of the simulated noise.
    """

    name = "toy"
    input_kinds = ("png", "jpeg", "tiff", "npy")
    physical_units = "intensity in [0, 1]"
    baseline_name = "measured (blurred)"

    def __init__(self, psf_sigma: float = 1.5, psf_size: int = 9, sigma: float = 0.05,
                 image_size: int | None = 64, sim_seed: int = 0):
        super().__init__()
        if not psf_sigma > 0:
            raise ValueError(f"psf_sigma must be > 0 pixels, got {psf_sigma}")
        if psf_size < 1 or psf_size % 2 == 0:
            raise ValueError(f"psf_size must be a positive odd number of pixels, got {psf_size}")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if image_size is not None and image_size < psf_size:
            raise ValueError(f"image_size must be at least psf_size ({psf_size}), got {image_size}")
        self.psf_sigma, self.psf_size, self.sigma = float(psf_sigma), int(psf_size), float(sigma)
        self.image_size, self.sim_seed = image_size, int(sim_seed)

    @property
    def channels(self) -> int:
        return 1

    def image_shape(self, input: str) -> tuple[int, ...]:
        _, paths = self.resolve(input)
        h, w = image_size(paths[0])
        return (1, self.image_size, self.image_size) if self.image_size is not None else (1, h, w)

    def load(self, input: str) -> tuple[Problem, Context]:
        kind, paths = self.resolve(input)
        img = torch.from_numpy(read_grey(paths[0]))
        if self.image_size is not None:
            side = min(img.shape)
            top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
            img = img[top:top + side, left:left + side]
            img = F.interpolate(img[None, None], size=(self.image_size,) * 2, mode="bilinear", antialias=True,
                                align_corners=False)[0, 0]
        imap = IntensityMap(0.5, 0.5, "intensity", "intensity [0, 1] -> [-1, 1]")
        x = imap.to_prior(img)[None, None].to(self.device, self.dtype)
        op = Convolution(gaussian_kernel(self.psf_size, self.psf_sigma), tuple(x.shape[1:])).to(self.device)
        problem = Problem.simulate(op, x, Gaussian(self.sigma), generator=torch.Generator().manual_seed(self.sim_seed),
                                   sigma_units="prior units ([-1, 1] images)")
        meta = {"file": str(paths[0]), "psf_sigma_px": self.psf_sigma, "sigma": self.sigma,
                "image_size": list(x.shape[-2:]), "normalisation": imap.as_dict()}
        return problem, Context(input, kind, paths, imap, meta=meta)

    def baseline(self, problem: Problem, context: Context) -> Tensor:
        return problem.y  # the blurred, noisy image itself

    def write(self, result: Any, context: Context, out_dir: Path) -> list[Path]:
        img = self.to_physical(result.mean, context)[0, 0].clamp(0, 1).detach().cpu().numpy()
        png = Image.fromarray(np.round(img * 255).astype(np.uint8))
        return [atomic_write(Path(out_dir) / "reconstruction.npy", lambda tmp: np.save(tmp, img.astype(np.float32))),
                atomic_write(Path(out_dir) / "reconstruction.png", lambda tmp: png.save(tmp, format="PNG"))]
