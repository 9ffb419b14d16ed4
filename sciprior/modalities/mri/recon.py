"""MRI baselines (zero-filled, CG-SENSE), k-space checks and Problem builders.

TV baseline: use the generic ``sciprior.solvers.classical.tv_pdhg(problem, lam=...)``; it only needs
``problem.operator`` to be a :class:`~sciprior.physics.operator.LinearOperator` with an exact adjoint,
which :class:`MultiCoilMRI` is (TV then acts on the real 2-channel image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sciprior.linalg import conjugate_gradient
from sciprior.modalities.mri.coils import espirit_maps, fit_kernel_width, rss
from sciprior.modalities.mri.fourier import ifft2c
from sciprior.modalities.mri.masks import calibration_shape
from sciprior.modalities.mri.operator import MultiCoilMRI, as_mask_2d
from sciprior.physics.noise import Gaussian
from sciprior.physics.problem import Problem


def check_kspace(kspace: Tensor, mask: Tensor | None = None, who: str = "kspace") -> Tensor:
    """Validate a complex k-space ``(B, C, H, W)`` (or ``(C, H, W)``) and, if given, its mask.

    Raises TypeError for a real tensor, ValueError for a wrong rank, NaN/Inf values (with their
    count) or a mask whose shape does not match ``(H, W)``. Returns the validated mask as
    ``(1, W)``/``(H, W)`` (or None).
    """
    if not isinstance(kspace, Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(kspace).__name__}")
    if not kspace.is_complex():
        raise TypeError(f"{who}: k-space must be complex, got dtype {kspace.dtype}")
    if kspace.dim() not in (3, 4):
        raise ValueError(f"{who}: expected k-space of shape (B, coils, H, W) or (coils, H, W), "
                         f"got {tuple(kspace.shape)}")
    bad = ~torch.isfinite(torch.view_as_real(kspace)).all(dim=-1)
    if bool(bad.any()):
        raise ValueError(f"{who}: the k-space measurement contains {int(bad.sum())} NaN/Inf values "
                         f"(shape {tuple(kspace.shape)})")
    if mask is None:
        return None
    return as_mask_2d(mask, tuple(kspace.shape[-2:]), who=f"{who} mask")


def zero_filled_rss(kspace: Tensor) -> Tensor:
    """fastMRI's baseline: RSS of the zero-filled coil images, ``(B, C, H, W)`` -> ``(B, 1, H, W)``."""
    check_kspace(kspace)
    if kspace.dim() == 3:
        kspace = kspace[None]
    return rss(ifft2c(kspace), dim=1)


def zero_filled(op: MultiCoilMRI, y: Tensor) -> Tensor:
    """SENSE-adjoint (zero-filled, coil-combined) image ``A^H y`` as ``(B, 2, H, W)``."""
    check_kspace(y, who=f"zero_filled({op.name})")
    return op.adjoint(y)


def cg_sense(op: MultiCoilMRI, y: Tensor, iters: int = 30, tol: float = 1e-6, lam: float = 0.0,
             x0: Tensor | None = None) -> Tensor:
    """CG-SENSE: solve ``(A^H A + lam I) x = A^H y`` by conjugate gradients (Pruessmann et al. 2001).

    ``lam = 0`` is the (early-stopped) least-squares SENSE solution; returns ``(B, 2, H, W)``.
    """
    check_kspace(y, who=f"cg_sense({op.name})")
    if lam < 0:
        raise ValueError(f"cg_sense: lam must be >= 0, got {lam}")
    rhs = op.adjoint(y)

    def apply(v: Tensor) -> Tensor:
        return op.normal(v) + lam * v if lam else op.normal(v)

    return conjugate_gradient(apply, rhs, x0=x0, iters=iters, tol=tol)


def simulate_kspace(op: MultiCoilMRI, x: Tensor, sigma: float,
                    generator: torch.Generator | None = None) -> Tensor:
    """Noisy masked k-space ``M (A_full x + n)``, complex Gaussian ``n`` with ``sigma`` per real/imag part.

    Unsampled locations stay exactly zero (the measurement layout).
    """
    with torch.no_grad():
        y = Gaussian(sigma).sample(op(x), generator)
    return y * op.mask.to(y.real.dtype)


def simulate_problem(image: Tensor, maps: Tensor, mask: Tensor, sigma: float = 0.0,
                     generator: torch.Generator | None = None, **metadata: Any) -> Problem:
    """A simulated MRI :class:`Problem` from a known image.

    Args:
        image: real ``(H, W)`` / ``(B, H, W)`` magnitude, complex ``(B, H, W)``, or real ``(B, 2, H, W)``.
        maps: complex ``(C, H, W)``; mask: ``(W,)`` or ``(H, W)``; sigma: per real/imag part.
    """
    x = image_to_channels(image)
    op = MultiCoilMRI(maps, mask)
    y = simulate_kspace(op, x, sigma, generator)
    return Problem(op, y, Gaussian(sigma), (2, *x.shape[-2:]), reference=x,
                   metadata={"modality": "mri", "sigma_units": "k-space (= image) units, per real/imag part",
                             **metadata})


def image_to_channels(image: Tensor) -> Tensor:
    """Real or complex ``(H, W)``/``(B, H, W)``, or real ``(B, 2, H, W)`` -> real ``(B, 2, H, W)``."""
    if image.is_complex():
        z = image if image.dim() == 3 else image[None]
        return torch.stack((z.real, z.imag), dim=1)
    if image.dim() == 4:
        if image.shape[1] != 2:
            raise ValueError(f"image_to_channels: a 4D image must be (B, 2, H, W), got {tuple(image.shape)}")
        return image
    x = image if image.dim() == 3 else image[None]
    return torch.stack((x, torch.zeros_like(x)), dim=1)


def estimate_noise_sigma(kspace: Tensor, mask: Tensor | None = None, corner: float = 0.125) -> float:
    """Robust per-part noise std from the k-space corners (``corner`` fraction of each side), where
    the signal is weakest: ``1.4826 * median(|real|, |imag|)`` of the sampled corner values."""
    m2 = check_kspace(kspace, mask)
    k = kspace if kspace.dim() == 4 else kspace[None]
    h, w = k.shape[-2:]
    ch, cw = max(1, int(h * corner)), max(1, int(w * corner))
    sel = torch.zeros((h, w), dtype=torch.bool, device=k.device)
    for ys in (slice(0, ch), slice(h - ch, h)):
        for xs in (slice(0, cw), slice(w - cw, w)):
            sel[ys, xs] = True
    if m2 is not None:
        sel &= m2.expand(h, w).bool().to(k.device)
    vals = k[..., sel]
    if vals.numel() == 0:
        raise ValueError("estimate_noise_sigma: no sampled k-space in the corners; pass sigma explicitly")
    parts = torch.cat((vals.real.reshape(-1), vals.imag.reshape(-1))).abs()
    return float(1.4826 * parts.median())


def problem_from_kspace(kspace: Tensor, mask: Tensor, maps: Tensor | None = None, sigma: float | None = 0.0,
                        scale: float | None = None, calib_shape: Sequence[int] | None = None,
                        espirit: dict[str, Any] | None = None, **metadata: Any) -> Problem:
    """A :class:`Problem` from measured k-space of one slice (e.g. a fastMRI file).

    Args:
        kspace: complex ``(C, H, W)`` or ``(1, C, H, W)`` centred k-space (single coil: ``C = 1``).
        mask: ``(W,)`` column mask or ``(H, W)``; k-space outside it is set to zero.
        maps: coil maps ``(C, H, W)``; None: ones for one coil, else ESPIRiT from the mask's fully
            sampled centre (``calib_shape`` overrides it; ``espirit`` holds extra ESPIRiT options).
        sigma: noise std per real/imag part in the file's k-space units; None estimates it with
            :func:`estimate_noise_sigma`.
        scale: multiply k-space (and sigma) by this; None: ``1 / max |A^H y|`` so the zero-filled
            image peaks at 1 (like the normalised sample slices). Stored in ``metadata["scale"]``;
            divide reconstructions by it to return to the file's units.
    """
    m2 = check_kspace(kspace, mask, who="problem_from_kspace")
    k = kspace if kspace.dim() == 4 else kspace[None]
    if k.shape[0] != 1:
        raise ValueError(f"problem_from_kspace: one slice at a time (coil maps are per slice), "
                         f"got batch {k.shape[0]}")
    c, h, w = k.shape[1:]
    k = k * m2.to(k.real.dtype)
    if maps is None:
        if c == 1:
            maps = torch.ones((1, h, w), dtype=k.dtype, device=k.device)
        else:
            cs = tuple(calib_shape) if calib_shape is not None else calibration_shape(m2.expand(h, w))
            opts = dict(espirit or {})
            opts["kernel_width"] = fit_kernel_width(cs, c, opts.get("kernel_width", 6))
            maps = espirit_maps(k[0], cs, **opts)
    elif tuple(maps.shape) != (c, h, w):
        raise ValueError(f"problem_from_kspace: maps of shape {tuple(maps.shape)} do not match k-space "
                         f"coils/size {(c, h, w)}")
    if sigma is None:
        sigma = estimate_noise_sigma(k, m2)
    op = MultiCoilMRI(maps.to(k.dtype), m2)
    if scale is None:
        peak = float(op.adjoint(k).square().sum(1).sqrt().max())
        if peak <= 0:
            raise ValueError("problem_from_kspace: the k-space is all zeros")
        scale = 1.0 / peak
    y = k * scale
    meta = {"modality": "mri", "scale": float(scale), "sigma_file_units": float(sigma),
            "sigma_units": "scaled k-space units, per real/imag part", **metadata}
    return Problem(op, y, Gaussian(float(sigma) * scale), (2, h, w), metadata=meta)
