"""Cartesian (multi-coil) SENSE operator ``y_c = M F S_c x``.

References:
    Pruessmann, Weiger, Scheidegger, Boesiger (1999). SENSE: sensitivity encoding for fast MRI.
    Magn. Reson. Med. 42:952-962.
    Pruessmann, Weiger, Boernert, Boesiger (2001). Advances in sensitivity encoding with arbitrary
    k-space trajectories. Magn. Reson. Med. 46:638-651 (CG-SENSE).

Layout:
    image       real ``(B, 2, H, W)``: channel 0 = real part, channel 1 = imaginary part.
    maps        complex ``(C, H, W)`` coil sensitivities, shared by every batch item.
    mask        0/1, ``(W,)`` (1D column mask, fastMRI style: every row of a sampled column),
                ``(1, W)`` or ``(H, W)`` (2D, e.g. Poisson disc); centred like the k-space.
    measurement complex ``(B, C, H, W)`` centred k-space (DC at ``(H//2, W//2)``), with zeros where
                ``mask == 0``. F is the centred orthonormal 2D FFT, so ``A^H A = I`` for a full mask
                and maps with ``sum_c |S_c|^2 = 1``.
Noise: :class:`~sciprior.physics.noise.Gaussian` with ``sigma`` per real/imaginary part, in the
units of this k-space (the image's units, since F is unitary).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sciprior.linalg import conjugate_gradient
from sciprior.modalities.mri.fourier import complex_dtype_for, shift_modulation, to_channels, to_complex
from sciprior.physics.operator import LinearOperator


def as_mask_2d(mask: Tensor, shape: tuple[int, int], who: str = "mask") -> Tensor:
    """Validate a 0/1 sampling mask against k-space ``shape = (H, W)``; return it as ``(1, W)`` or ``(H, W)``.

    Accepts ``(W,)``, ``(1, W)``, ``(H, W)`` and the fastMRI layout ``(1, ..., 1, W, 1)`` squeezed.
    Raises a ValueError naming both shapes when they disagree.
    """
    mask = torch.as_tensor(mask)
    h, w = shape
    if mask.is_complex():
        raise TypeError(f"{who}: a sampling mask must be real 0/1, got dtype {mask.dtype}")
    m = mask
    if m.dim() > 2:  # fastMRI MaskFunc output (1, 1, W, 1) or similar: keep the non-singleton axes
        m = m.squeeze()
        if m.dim() == 0:
            m = m.reshape(1)
    if m.dim() == 1:
        m = m.reshape(1, -1)
    if m.dim() != 2 or m.shape[-1] != w or m.shape[0] not in (1, h):
        raise ValueError(f"{who}: mask of shape {tuple(mask.shape)} does not match k-space of shape "
                         f"(..., {h}, {w}); expected ({w},), (1, {w}) or ({h}, {w})")
    if not torch.all((m == 0) | (m == 1)):
        raise ValueError(f"{who}: mask values must be 0 or 1")
    return m.to(torch.get_default_dtype())


class MultiCoilMRI(LinearOperator):
    """Cartesian parallel-imaging forward model ``y_c = M F S_c x`` (SENSE).

    Args:
        maps: complex coil sensitivities ``(C, H, W)``; ``C = 1`` with ``|S| = 1`` is single-coil.
            For the closed forms and ``A^H A = I`` at full sampling, normalise them so that
            ``sum_c |S_c|^2 = 1`` where the object is (ESPIRiT and :func:`birdcage_maps` do).
        mask: 0/1 sampling mask, ``(W,)``, ``(1, W)`` or ``(H, W)``, centred like the k-space.
        cg_iters, cg_tol: conjugate-gradient settings for ``pinv``/``prox_l2`` when no diagonal closed
            form exists (multi-coil, or a single coil with non-unit magnitude).

    Closed forms: with one coil of unit modulus, ``A A^H = M`` (a projector) so ``pinv = A^H`` and
    ``prox_l2`` is diagonal in k-space. Otherwise ``pinv`` (minimum-norm least squares, CG on the
    normal equations from 0) and ``prox_l2`` use conjugate gradients; ``closed_form`` says which.
    """

    def __init__(self, maps: Tensor, mask: Tensor, cg_iters: int = 50, cg_tol: float = 1e-6):
        maps = torch.as_tensor(maps)
        if maps.dim() != 3:
            raise ValueError(f"MultiCoilMRI: maps must be complex (coils, H, W), "
                             f"got shape {tuple(maps.shape)}")
        if not maps.is_complex():
            maps = maps.to(complex_dtype_for(maps.dtype))
        if not torch.isfinite(torch.view_as_real(maps)).all():
            raise ValueError("MultiCoilMRI: coil maps contain NaN/Inf values")
        c, h, w = maps.shape
        super().__init__((2, h, w), (c, h, w))
        mask2 = as_mask_2d(mask, (h, w), who="MultiCoilMRI")
        self.num_coils, self.image_size = c, (h, w)
        self.cg_iters, self.cg_tol = int(cg_iters), float(cg_tol)
        self.register_buffer("maps", maps)
        self.register_buffer("mask", mask2)
        # y = M * fft2(S' * ifftshift(z)) with S' = phi * ifftshift(S): one roll per image, not per coil.
        phi = shift_modulation((h, w), maps.dtype, maps.device)
        self.register_buffer("_maps_eff", phi * torch.fft.ifftshift(maps, dim=(-2, -1)))
        self._unit_single = bool(c == 1 and torch.allclose(maps.abs(), torch.ones_like(maps.real), atol=1e-5))

    def measured_support(self) -> Tensor:
        """The sampling mask ``(H, W)``: unsampled k-space is not measured (broadcasts over coils)."""
        return self.mask

    # --- helpers -------------------------------------------------------------------------------
    @property
    def closed_form(self) -> bool:
        """True when ``pinv``/``prox_l2`` are exact diagonal closed forms (single coil, ``|S| = 1``)."""
        return self._unit_single

    @property
    def acceleration(self) -> float:
        """``H * W / (number of sampled k-space locations)``."""
        h, w = self.image_size
        n = float(self.mask.sum()) * (h if self.mask.shape[0] == 1 else 1)
        return h * w / max(n, 1.0)

    def _eff_maps(self, dtype: torch.dtype) -> Tensor:
        m = self._maps_eff
        return m if m.dtype == dtype else m.to(dtype)

    def _check_kspace(self, y: Tensor) -> None:
        if not isinstance(y, Tensor):
            raise TypeError(f"{self.name}: expected a complex k-space tensor, got {type(y).__name__}")
        if not y.is_complex():
            raise TypeError(f"{self.name}: k-space must be complex (B, {self.num_coils}, "
                            f"{self.image_size[0]}, {self.image_size[1]}), got dtype {y.dtype}")
        self.check_measurement(y)

    def _encode(self, z: Tensor) -> Tensor:
        """Complex image (B, H, W) -> unmasked centred coil k-space (B, C, H, W)."""
        u = torch.fft.ifftshift(z, dim=(-2, -1))
        return torch.fft.fft2(self._eff_maps(z.dtype) * u[:, None], norm="ortho")

    def _decode(self, k: Tensor) -> Tensor:
        """Adjoint of :meth:`_encode`: centred coil k-space (B, C, H, W) -> complex image (B, H, W)."""
        v = torch.fft.ifft2(k, norm="ortho")
        w = (self._eff_maps(k.dtype).conj() * v).sum(dim=1)
        return torch.fft.fftshift(w, dim=(-2, -1))

    # --- operator ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Real image ``(B, 2, H, W)`` -> masked complex k-space ``(B, C, H, W)``."""
        self.check_input(x)
        return self._encode(to_complex(x)) * self.mask.to(x.dtype)

    def adjoint(self, y: Tensor) -> Tensor:
        """Complex k-space ``(B, C, H, W)`` -> real image ``(B, 2, H, W)`` (``sum_c S_c^H F^H M y_c``)."""
        self._check_kspace(y)
        return to_channels(self._decode(y * self.mask.to(y.real.dtype)))

    def normal(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return to_channels(self._decode(self._encode(to_complex(x)) * self.mask.to(x.dtype)))

    # --- closed forms / CG ---------------------------------------------------------------------
    @property
    def has_pinv(self) -> bool:
        return True

    @property
    def has_prox_l2(self) -> bool:
        return True

    def pinv(self, y: Tensor) -> Tensor:
        """Minimum-norm least-squares image ``A^+ y``: exact (``= A^H y``) for one unit-modulus coil,
        CG on ``A^H A x = A^H y`` from zero otherwise (``cg_iters``, ``cg_tol``)."""
        aty = self.adjoint(y)
        if self._unit_single:
            return aty
        return conjugate_gradient(self.normal, aty, iters=self.cg_iters, tol=self.cg_tol)

    def prox_l2(self, z: Tensor, y: Tensor, gamma: float | Tensor) -> Tensor:
        """``argmin_x ||A x - y||^2 / 2 + ||x - z||^2 / (2 gamma)``; ``gamma`` scalar or per item (B,).

        Single unit-modulus coil: ``x = S^H F^H [(gamma M y + F S z) / (gamma M + 1)]`` (diagonal in
        k-space). Otherwise CG on ``(A^H A + I / gamma) x = A^H y + z / gamma`` started at ``z``.
        """
        self.check_input(z)
        self._check_kspace(y)
        g = gamma
        if isinstance(g, Tensor):
            if g.dim() == 1:
                g = g.reshape(-1, 1, 1, 1)
            g = g.to(z.dtype)
        if self._unit_single:
            m = self.mask.to(z.dtype)
            kz = self._encode(to_complex(z))
            kx = (g * m * y + kz) / (g * m + 1.0)
            return to_channels(self._decode(kx))
        gi = g if not isinstance(g, Tensor) else g.reshape(-1, 1, 1, 1)
        rhs = self.adjoint(y) + z / gi
        return conjugate_gradient(lambda v: self.normal(v) + v / gi, rhs, x0=z, iters=self.cg_iters,
                                  tol=self.cg_tol)

    def extra_repr(self) -> str:
        h, w = self.image_size
        return f"coils={self.num_coils}, image=({h}, {w}), acceleration={self.acceleration:.2f}"


class SingleCoilMRI(MultiCoilMRI):
    """Single-coil Cartesian MRI ``y = M F x`` (one coil, ``S = 1``); measurement ``(B, 1, H, W)``."""

    def __init__(self, mask: Tensor, image_size: Sequence[int], dtype: torch.dtype = torch.complex64):
        h, w = (int(s) for s in image_size)
        super().__init__(torch.ones((1, h, w), dtype=dtype), mask)
