"""MRI adapter: NIfTI magnitude images (simulated multi-coil Cartesian k-space) or fastMRI HDF5 k-space.

Image model and prior domain (``image_model``):

- ``"magnitude"`` (1-channel prior, as trained with the ``slices`` reader, or the ``kspace`` reader with
  ``output: magnitude``): the image is real. Image inputs map the volume's
  ``percentiles`` (default 0.5 and 99.5) to [-1, 1]; k-space inputs map ``|m| / s`` (``s`` the
  ``scale_percentile`` percentile of the foreground of a CG-SENSE magnitude,
  :mod:`~sciprior.modalities.mri.intensity`) from [0, 1] to [-1, 1]. The
  object the scanner sees is ``u = (x + 1) / 2``; the SENSE operator (complex images) is composed with
  :class:`~sciprior.physics.generic.RealToComplex` (zero imaginary part), so the problem's operator is
  ``0.5 * SENSE @ RealToComplex`` and its data ``y - SENSE(0.5 * 1)``.
- ``"complex"`` (2-channel prior, the ``kspace`` reader with ``output: complex``): ``x = m / s`` as (real, imag)
  channels with ``s`` the ``scale_percentile`` percentile of the magnitude (k-space inputs: of the foreground of
  the CG-SENSE magnitude, as above); the SENSE operator acts on ``x`` directly.

Measurements. An image input is measured with ``num_coils`` simulated birdcage coils
(:func:`~sciprior.modalities.mri.coils.birdcage_maps`; one coil = single-coil Fourier sampling), a
``mask_type`` mask of ``acceleration`` (fastMRI column masks with ``center_fraction``, or a 2D
variable-density Poisson-disc mask with a ``calib`` square) and complex Gaussian noise ``sigma`` per
real/imaginary part, in units of ``u`` (the normalised image: the centred FFT is unitary). An HDF5 input
with a ``kspace`` dataset (recognised by content: the fastMRI layout) is used as measured: its ``mask``
dataset when present (``use_file_mask``), otherwise it is retrospectively undersampled with the configured
mask and the fully sampled data give the reference.
Coil maps of k-space inputs come from ESPIRiT on the mask's fully sampled centre; ``sigma`` is the
noise level in units of ``u`` (``None``: estimated from the k-space corners).

Outputs: NIfTI input -> ``reconstruction.nii.gz`` (magnitude in the file's units; the input's affine,
adjusted for the slices and any resizing); fastMRI input -> ``<name>.h5`` in the fastMRI layout
(measured ``kspace``, ``mask``, the reconstruction magnitude in ``reconstruction_rss`` (multi-coil) or
``reconstruction_esc`` (single-coil), cropped to the header's recon size as fastMRI does, the input's
ISMRMRD header and attributes). With several posterior samples a ``std`` file is written alongside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from torch import Tensor

from sciprior.io.grid import ImageStack, Slices, VolumeGrid, cut_stack, planned_depth, select_slices, target_size
from sciprior.io.limits import check_allocation
from sciprior.io.nifti import nifti_shape, read_nifti
from sciprior.io.paths import InputError
from sciprior.modalities.adapter import (
    Context,
    IntensityMap,
    ModalityAdapter,
    key,
    magnitude,
    stack_problem,
    window_map,
    write_stack_nifti,
)
from sciprior.modalities.mri.coils import birdcage_maps, fit_kernel_width, full_adjoint, lowres_phase, rss
from sciprior.modalities.mri.evaluate import fastmri_metrics
from sciprior.modalities.mri.fastmri import center_crop, parse_ismrmrd_header, read_fastmri, write_fastmri
from sciprior.modalities.mri.fourier import crop_readout, ifft2c
from sciprior.modalities.mri.intensity import SCALE_PERCENTILE, foreground_scale
from sciprior.modalities.mri.masks import calibration_shape, column_mask, poisson_disc_mask
from sciprior.modalities.mri.operator import MultiCoilMRI, as_mask_2d
from sciprior.modalities.mri.recon import cg_sense, estimate_noise_sigma, problem_from_kspace, simulate_kspace
from sciprior.physics.generic import RealToComplex
from sciprior.physics.noise import Gaussian
from sciprior.physics.operator import LinearOperator
from sciprior.physics.problem import Problem
from sciprior.ranges import FiniteFloat, ImageSize, NonNegativeFloat, PositiveFloat, PositiveInt, UnitInterval, checked

MaskType = Literal["random", "equispaced", "equispaced_fraction", "poisson"]

#: CG-SENSE iterations of the estimate the intensity scale of measured k-space is read from
SCALE_CG_ITERS = 10
#: CG-SENSE iterations of the baseline in the fastMRI metrics of the report (early-stopped least squares)
CG_SENSE_ITERS = 10


def open_hdf5(path: Path, key: str = "input") -> h5py.File:
    """``h5py.File(path, "r")`` with an error that names the file and the config key."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{key}: cannot open the HDF5 file {str(path)!r} (corrupt or truncated?): {e}") from None


def has_kspace(path: Path, key: str = "input") -> bool:
    """Whether an HDF5 file holds a ``kspace`` dataset (the fastMRI layout); reads the file's index only."""
    with open_hdf5(path, key) as f:
        return "kspace" in f


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's pairing: 0.08 for 4x, 0.04 for 8x (``0.32 / acceleration``)."""
    return 0.32 / acceleration


class MRIAdapter(ModalityAdapter):
    """Cartesian (multi-coil) MRI: images are measured with simulated coils and masks, k-space is used as is.

    Args:
        acceleration: undersampling factor R (sampled fraction 1/R).
        center_fraction: fully sampled central column fraction of the column masks (default
            ``0.32 / acceleration``: fastMRI's 0.08 at 4x, 0.04 at 8x).
        mask_type: ``random`` / ``equispaced`` / ``equispaced_fraction`` (fastMRI column masks along the
            phase-encoding (last) axis) or ``poisson`` (2D variable-density Poisson disc).
        calib: side of the fully sampled centre square of ``poisson`` masks (pixels).
        num_coils: simulated receive coils for image inputs (1: single-coil).
        sigma: complex Gaussian noise std per real/imaginary part, in units of the normalised image
            ``u`` (see the module docstring). Image inputs: the simulated noise. k-space inputs: the
            assumed noise (``None``: estimated from the k-space corners).
        image_model: ``magnitude`` (1-channel prior) or ``complex`` (2-channel prior).
        image_size: reconstruction grid (H, W) for image inputs (int: square); ``None`` keeps the
            input's size. k-space inputs are reconstructed at their own size.
        pad_to_square: pad planes (with the background) to the aspect ratio of ``image_size`` before resizing,
            so pixels stay square (as the training data are prepared).
        slices: ``"middle"``, a slice index, ``"all"`` or a ``[start, stop)`` range of axial slices
            (NIfTI/DICOM) or fastMRI slices; a range or ``"all"`` gives a 3D problem.
        percentiles: (low, high) percentiles of the volume mapped to [-1, 1] (magnitude, image inputs).
        scale_percentile: percentile that becomes 1: of ``|image|`` (complex model, image inputs), of the
            foreground of the CG-SENSE magnitude (k-space inputs, both models; see
            :mod:`~sciprior.modalities.mri.intensity`).
        use_file_mask: use the ``mask`` stored in a fastMRI file (else undersample retrospectively).
        crop_readout: reconstruct only the header's reconSpace rows of an oversampled readout (fastMRI's
            640 -> 320), as fastMRI crops it; column masks only (the readout must be fully sampled).
        espirit_kernel, espirit_threshold, espirit_crop: ESPIRiT settings for k-space inputs. ``espirit_crop``
            zeroes the maps where the top eigenvalue is below it (ESPIRiT's support estimate, BART's 0.95; 0: off).
            The background is then in the operator's null space: a whole-slice prior keeps it empty (the 64 x 64
            demo prior: 28.1 dB with 0.95, 24.2 with 0 on an own 64 x 64 file), a patch prior fills it with tissue
            (5.2 dB instead of 34.3 on sample:mni152_kspace), so patch priors need 0 (configs/mri/own_kspace.yaml):
            unit-norm maps over the whole field of view, where the measured noise says the signal is 0.
        sim_seed: seed of the simulated mask and noise.
    """

    name = "mri"
    input_kinds = ("nifti", "hdf5")
    physical_units = "MR magnitude (the input's units)"
    baseline_name = "zero-filled"

    @checked
    def __init__(self, acceleration: PositiveFloat = 4.0, center_fraction: UnitInterval | None = None,
                 mask_type: MaskType = "random", calib: PositiveInt = 24, num_coils: PositiveInt = 8,
                 sigma: NonNegativeFloat | None = 0.005, image_model: Literal["magnitude", "complex"] = "magnitude",
                 image_size: ImageSize | tuple[ImageSize, ImageSize] | None = None, pad_to_square: bool = True,
                 slices: Slices = "middle", percentiles: tuple[FiniteFloat, FiniteFloat] = (0.5, 99.5),
                 scale_percentile: PositiveFloat = SCALE_PERCENTILE, use_file_mask: bool = True,
                 crop_readout: bool = True,
                 espirit_kernel: PositiveInt = 6, espirit_threshold: NonNegativeFloat = 0.02,
                 espirit_crop: UnitInterval = 0.95, sim_seed: int = 0):
        super().__init__()
        if not acceleration >= 1:
            raise ValueError(f"acceleration must be >= 1, got {acceleration}")
        cf = default_center_fraction(acceleration) if center_fraction is None else float(center_fraction)
        if not 0 <= cf < 1:
            raise ValueError(f"center_fraction must be in [0, 1), got {center_fraction}")
        if num_coils < 1:
            raise ValueError(f"num_coils must be >= 1, got {num_coils}")
        if sigma is not None and sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        lo, hi = (float(p) for p in percentiles)
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        if not 0 < scale_percentile <= 100:
            raise ValueError(f"scale_percentile must be in (0, 100], got {scale_percentile}")
        self.acceleration, self.center_fraction = float(acceleration), cf
        self.mask_type, self.calib, self.num_coils = mask_type, int(calib), int(num_coils)
        self.sigma = None if sigma is None else float(sigma)
        self.image_model = image_model
        self.image_size, self.pad_to_square, self.slices = image_size, bool(pad_to_square), slices
        self.percentiles, self.scale_percentile = (lo, hi), float(scale_percentile)
        self.use_file_mask, self.crop_readout = bool(use_file_mask), bool(crop_readout)
        self.espirit = {"kernel_width": int(espirit_kernel), "thresh": float(espirit_threshold),
                        "crop": float(espirit_crop)}
        self.sim_seed = int(sim_seed)

    # -- prior compatibility ------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1 if self.image_model == "magnitude" else 2

    channels_key = key("image_model")

    def check_input(self, input: str, key: str = "input") -> None:
        super().check_input(input, key)
        kind, paths = self.resolve(input, key)
        if kind == "hdf5" and not has_kspace(paths[0], key):
            raise InputError(f"{key}: {str(paths[0])!r} is an HDF5 file without a 'kspace' dataset; the MRI modality "
                             "reads fastMRI-layout k-space (kspace: (slices, [coils,] H, W) complex)")

    def image_shape(self, input: str) -> tuple[int, ...]:
        kind, paths = self.resolve(input)
        if kind == "hdf5":
            with open_hdf5(paths[0]) as f:
                if "kspace" not in f:
                    raise InputError(f"input: {str(paths[0])!r} has no 'kspace' dataset")
                shape, dtype = f["kspace"].shape, f["kspace"].dtype
            if dtype.kind != "c":
                raise InputError(f"input: {str(paths[0])!r}: 'kspace' must be complex, got {dtype}")
            if len(shape) not in (3, 4):
                raise InputError(f"input: {str(paths[0])!r}: 'kspace' must be (slices, coils, H, W) or (slices, H, W), "
                                 f"got shape {tuple(shape)}")
            n, (h, w) = int(shape[0]), (int(shape[-2]), int(shape[-1]))
            h = self._readout_rows(paths[0], h, w)
            self._check_kspace_size((h, w), paths[0])
            d = planned_depth(n, self.slices, key("slices"))
            check_allocation((d or 1) * int(np.prod(shape[1:])) * 8,
                             f"the k-space of {str(paths[0])!r} ({d or 1} of {n} slices of {tuple(shape[1:])}, "
                             "complex64)", "input")
        else:
            x, y, n = nifti_shape(paths[0])
            h, w = target_size(self.image_size, (y, x))
        d = planned_depth(n, self.slices, key("slices"))
        return (self.channels, h, w) if d is None else (self.channels, d, h, w)

    def _readout_rows(self, path: Path, h: int, w: int) -> int:
        """The k-space rows the reconstruction keeps: the header's reconSpace rows when the readout is oversampled,
        ``crop_readout`` is on and the mask samples whole columns (from the file's index, header and mask only)."""
        if not self.crop_readout:
            return h
        with open_hdf5(path) as f:
            if "ismrmrd_header" not in f:
                return h
            try:
                rh = int(parse_ismrmrd_header(f["ismrmrd_header"][()], where=f"{path}: ismrmrd_header").recon_size[0])
            except ValueError as e:
                raise InputError(f"input: {e}") from None
            if self.use_file_mask and "mask" in f:
                m = np.asarray(f["mask"][()])
                columns = m.ndim == 1 or (m.ndim == 2 and bool((m == m[:1]).all()))
            else:
                columns = self.mask_type != "poisson"
        return rh if columns and 0 < rh < h else h

    def _check_kspace_size(self, size: tuple[int, int], path: Path) -> None:
        if self.image_size is None:
            return
        want = (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)
        if tuple(want) != tuple(size):
            raise InputError(f"{key('image_size')}={self.image_size} but the k-space in {str(path)!r} is "
                             f"{size[0]}x{size[1]}; k-space inputs are reconstructed at their own size (set "
                             "image_size: null and use a patch-wise prior for other sizes)")

    # -- masks and operators --------------------------------------------------------------------------
    def make_mask(self, size: tuple[int, int]) -> Tensor:
        """The sampling mask for k-space of ``size = (H, W)``: ``(W,)`` columns or ``(H, W)`` Poisson disc."""
        h, w = size
        if self.mask_type == "poisson":
            calib = min(self.calib, h, w)
            return poisson_disc_mask((h, w), self.acceleration, calib=calib, seed=self.sim_seed)
        return column_mask(self.mask_type, w, self.acceleration, self.center_fraction, seed=self.sim_seed)[0]

    def _image_operator(self, base: LinearOperator, size: tuple[int, int]) -> LinearOperator:
        """The operator on prior images: ``base`` (complex model) or ``0.5 * base @ RealToComplex``."""
        if self.image_model == "complex":
            return base
        return 0.5 * (base @ RealToComplex(size))

    def _offset_image(self, shape: tuple[int, ...]) -> Tensor | None:
        """``beta`` of ``u = alpha x + beta`` as a complex-channel image (magnitude model: 0.5), or None."""
        if self.image_model == "complex":
            return None
        beta = torch.zeros((1, 2, *shape), dtype=self.dtype, device=self.device)
        beta[:, 0] = 0.5
        return beta

    # -- load -----------------------------------------------------------------------------------------
    def load(self, input: str) -> tuple[Problem, Context]:
        kind, paths = self.resolve(input)
        if kind == "hdf5":
            return self._load_kspace(input, paths[0])
        if kind != "nifti":
            raise InputError(f"input: the MRI adapter reads NIfTI images and fastMRI HDF5 k-space, not {kind} "
                             f"({input!r})")
        return self._load_image(input, kind, paths, read_nifti(paths[0]))

    def _load_image(self, input: str, kind: str, paths: list[Path], grid: VolumeGrid) -> tuple[Problem, Context]:
        vol = grid.data
        if self.image_model == "magnitude":
            lo, hi = (float(v) for v in np.percentile(vol, self.percentiles))
            if hi <= lo:
                raise InputError(f"input: {input!r}: the {self.percentiles} percentiles are equal ({lo:g}); "
                                 "the image is constant")
            imap = window_map(lo, hi, "a.u.", f"MR magnitude, percentiles {self.percentiles} of the volume")
            pad_value = float(vol.min())
        else:
            s = float(np.percentile(np.abs(vol), self.scale_percentile))
            if s <= 0:
                raise InputError(f"input: {input!r}: the {self.scale_percentile} percentile of |image| is 0")
            imap = IntensityMap(s, 0.0, "a.u.", f"MR complex image / {self.scale_percentile} percentile of "
                                f"|image| ({s:g}), as (real, imag)")
            pad_value = 0.0
        st: ImageStack = cut_stack(grid, self.slices, self.image_size, self.pad_to_square, pad_value, key("slices"))
        d, h, w = st.data.shape
        xr = imap.to_prior(st.data).to(self.dtype)  # (D, H, W)
        if self.image_model == "complex":
            xr = torch.stack((xr, torch.zeros_like(xr)), dim=1)  # (D, 2, H, W)
        else:
            xr = xr[:, None]
        maps = (birdcage_maps(self.num_coils, (h, w)) if self.num_coils > 1
                else torch.ones((1, h, w), dtype=torch.complex64))
        mask = self.make_mask((h, w))
        base = MultiCoilMRI(maps.to(self.device), mask.to(self.device))
        op2d = self._image_operator(base, (h, w))
        # the measured object u = alpha x + beta, as complex channels
        u = xr.to(self.device) if self.image_model == "complex" else torch.cat(
            (0.5 * (xr + 1.0), torch.zeros_like(xr)), dim=1).to(self.device)
        gen = torch.Generator().manual_seed(self.sim_seed)
        sigma = 0.0 if self.sigma is None else self.sigma
        y = simulate_kspace(base, u, sigma, generator=gen)  # (D, C, H, W) measured k-space
        beta = self._offset_image((h, w))
        offset = base(beta) if beta is not None else None  # (1, C, H, W)
        y_prior = y - offset if offset is not None else y
        op, y_prior, ref, offset = stack_problem(op2d, y_prior, xr, offset, d, st.stack)
        meas = y[None] if st.stack else y
        problem = Problem(op, y_prior, Gaussian(sigma), tuple(ref.shape[1:]), reference=ref.to(self.device),
                          metadata={"modality": self.name, "measurement_offset": offset,
                                    "sigma_units": "normalised image u per real/imag part"})
        ps = st.pixel_spacing
        ctx = Context(input, "sample" if input.startswith("sample:") else kind, paths, imap, meta={
            "source": kind, "file": str(paths[0]), "image_model": self.image_model,
            "pixel_spacing_mm": list(ps), "slices": [st.plane_grid.start, st.plane_grid.start + d],
            "image_size": [h, w], "num_coils": self.num_coils, "mask_type": self.mask_type,
            "acceleration_nominal": self.acceleration, "acceleration_actual": base.acceleration,
            "center_fraction": self.center_fraction, "sigma": sigma, "simulated": True,
            "normalisation": imap.as_dict(), "file_axcodes": grid.meta.get("file_axcodes"),
        }, extra={"stack": st, "measured": meas, "base": base})
        return problem, ctx

    def _load_kspace(self, input: str, path: Path) -> tuple[Problem, Context]:
        with open_hdf5(path) as f:
            if "kspace" not in f:
                raise InputError(f"input: {str(path)!r} has no 'kspace' dataset")
            n = int(f["kspace"].shape[0])
        start, stop, stack = select_slices(self.slices, n, key("slices"), "a file with {n} slices")
        vol = read_fastmri(path, slices=list(range(start, stop)))
        k = vol.kspace  # (S, C, H, W) complex64
        s_, c, h0, w = k.shape
        file_mask = vol.mask is not None and self.use_file_mask
        retrospective = not file_mask
        sigma_file = None
        if self.sigma is None:
            # before any crop: the corners of the whole (oversampled) acquisition hold the most noise samples
            try:
                sigma_file = estimate_noise_sigma(k, as_mask_2d(vol.mask, (h0, w), who=f"{path}: mask")
                                                  if file_mask else None)
            except ValueError as e:
                raise InputError(f"{key('sigma')}: cannot estimate the noise of {str(path)!r} ({e}); "
                                 "set sigma explicitly") from e
        rh, rw = (int(v) for v in vol.header.recon_size[:2])
        keep = self._readout_rows(path, h0, w)  # the same decision as image_shape's
        cropped = keep < h0
        if cropped:  # fastMRI's 2x oversampled readout: reconstruct the reconSpace rows only
            k = crop_readout(k, keep)
        h = k.shape[-2]
        self._check_kspace_size((h, w), path)
        if file_mask:
            m = vol.mask if vol.mask.dim() == 1 else vol.mask[0]
            mask2 = as_mask_2d(m if cropped else vol.mask, (h, w), who=f"{path}: mask")
        else:
            mask2 = as_mask_2d(self.make_mask((h, w)), (h, w))
        k_meas = k * mask2.to(torch.float32)
        calib = calibration_shape(mask2.expand(h, w))
        espirit = dict(self.espirit)
        if c > 1:  # a kernel the ACS block can determine (a wider one gives wrong maps, see fit_kernel_width)
            try:
                espirit["kernel_width"] = fit_kernel_width(calib, c, self.espirit["kernel_width"])
            except ValueError as e:
                raise InputError(f"input: {str(path)!r}: {e}; raise {key('center_fraction')}") from None
        bases = []
        for i in range(s_):
            p = problem_from_kspace(k_meas[i], mask2, sigma=0.0, scale=1.0, calib_shape=calib, espirit=espirit)
            base = p.operator
            if self.image_model == "magnitude":
                # fold the low-resolution image phase into the maps, so the object is (nearly) real
                phase = lowres_phase(base, k_meas[i:i + 1], calib)
                base = MultiCoilMRI(base.maps * phase, mask2)
            bases.append(base.to(self.device))
        k_meas = k_meas.to(self.device)
        # the intensity scale: the foreground percentile of a CG-SENSE estimate (as the training slices were
        # normalised; the zero-filled image would under-read it by the energy the mask drops), in file units
        est = torch.cat([cg_sense(b, k_meas[i:i + 1], iters=SCALE_CG_ITERS) for i, b in enumerate(bases)])
        scale = foreground_scale(est.square().sum(1).sqrt(), self.scale_percentile)
        if scale <= 0:
            raise InputError(f"input: {str(path)!r}: the CG-SENSE image is zero (empty k-space?)")
        sigma = sigma_file / scale if sigma_file is not None else self.sigma
        y_u = k_meas / scale  # k-space of u
        how = (f"{self.scale_percentile:g}th percentile of the foreground of the CG-SENSE magnitude "
               f"({SCALE_CG_ITERS} iterations; {scale:g} in file units)")
        if self.image_model == "magnitude":
            imap = IntensityMap(scale / 2.0, scale / 2.0, "a.u.", f"MR magnitude / {how}, [0, 1] -> [-1, 1]")
        else:
            imap = IntensityMap(scale, 0.0, "a.u.", f"MR complex image / {how}, as (real, imag)")
        ops2d = [self._image_operator(b, (h, w)) for b in bases]
        beta = self._offset_image((h, w))
        offsets = torch.cat([b(beta) for b in bases]) if beta is not None else None  # (S, C, H, W)
        y_prior = y_u - offsets if offsets is not None else y_u
        ref = None
        if retrospective:
            full = torch.cat([full_adjoint(b, k[i:i + 1].to(self.device)) / scale for i, b in enumerate(bases)])
            ref = (2.0 * full.square().sum(1, keepdim=True).sqrt() - 1.0 if self.image_model == "magnitude"
                   else full).to(self.dtype)
        elif vol.reconstruction is not None and tuple(vol.reconstruction.shape[-2:]) == (h, w):
            # the file's reference (e.g. fastMRI's reconstruction_rss of the fully sampled scan) at this grid; a
            # magnitude, so the complex model gets it as a real image (it is scored on the magnitude)
            u = vol.reconstruction[:, None].to(self.device) / scale
            ref = (2.0 * u - 1.0 if self.image_model == "magnitude" else torch.cat((u, torch.zeros_like(u)), 1))
            ref = ref.to(self.dtype)
        op, y_prior, ref, offsets = stack_problem(ops2d, y_prior, ref, offsets, s_, stack)
        shape = (self.channels, s_, h, w) if stack else (self.channels, h, w)
        problem = Problem(op, y_prior, Gaussian(sigma), shape, reference=ref,
                          metadata={"modality": self.name, "measurement_offset": offsets,
                                    "sigma_units": "normalised image u per real/imag part"})
        accel = h * w / float(mask2.expand(h, w).sum())
        ctx = Context(input, "hdf5", [path], imap, meta={
            "source": "fastmri", "file": str(path), "image_model": self.image_model,
            "slices": [start, stop], "kspace_shape": [s_, c, h0, w], "multicoil": vol.multicoil,
            "readout_cropped_to": h if cropped else None,
            "mask": "file" if not retrospective else f"{self.mask_type} (retrospective)",
            "acceleration_actual": accel, "sigma": sigma, "simulated": False, "scale": scale,
            "calibration_shape": list(calib), "espirit_kernel": espirit["kernel_width"],
            "normalisation": imap.as_dict(),
            "recon_size": [rh, rw],
        }, extra={"volume": vol, "mask": mask2, "measured": k_meas, "bases": bases, "stack": stack,
                  "full": k if retrospective else None,
                  # what the output file stores: the file's own k-space (all readout rows) under this mask
                  "written_kspace": vol.kspace * (as_mask_2d(mask2[0], (h0, w)) if cropped else mask2).float()})
        return problem, ctx

    def extra_metrics(self, mean: Tensor, context: Context) -> dict[str, Any] | None:
        """fastMRI's NMSE / PSNR / SSIM (:func:`~sciprior.modalities.mri.evaluate.fastmri_metrics`) of the
        reconstruction, zero-filled RSS and CG-SENSE magnitudes in the file's units, centre-cropped to the reconSpace
        size, against the file's ``reconstruction_rss``/``_esc`` when it has one, else the RSS of the fully sampled
        k-space (retrospective masks); None for image inputs or files without a reference."""
        if "volume" not in context.extra:
            return None
        vol, full = context.extra["volume"], context.extra["full"]
        h, w = context.extra["measured"].shape[-2:]
        rh, rw = context.meta["recon_size"]
        if vol.reconstruction is not None:
            target, source = vol.reconstruction.double(), f"{vol.reconstruction_key} in the file"
        elif full is not None:
            target, source = rss(ifft2c(full), dim=1)[:, 0].double(), "RSS of the fully sampled k-space"
        else:
            return None
        crop = (min(rh, h, target.shape[-2]) if rh > 0 else h, min(rw, w, target.shape[-1]) if rw > 0 else w)

        def scored(x: Tensor) -> dict[str, float]:  # (S, H, W) magnitude -> the metrics on the crop
            return fastmri_metrics(center_crop(target, crop), center_crop(x.detach().cpu().double(), crop))

        meas, bases = context.extra["measured"], context.extra["bases"]
        rec = self.to_physical(mean, context)[0, 0]  # ([D,] H, W)
        rec = rec if rec.dim() == 3 else rec[None]
        cg = torch.cat([cg_sense(b, meas[i:i + 1], iters=CG_SENSE_ITERS) for i, b in enumerate(bases)])
        return {"fastmri": {
            "definition": "fastMRI evaluate.py: magnitude volumes in the file's units, centre-cropped to "
                          f"{list(crop)}; data range = max of the target volume; SSIM per slice (7 x 7), averaged",
            "target": source, "crop": list(crop),
            "reconstruction": scored(rec),
            "zero_filled_rss": scored(rss(ifft2c(meas), dim=1)[:, 0]),
            f"cg_sense_{CG_SENSE_ITERS}": scored(cg.square().sum(1).sqrt()),
        }}

    # -- baseline, physical units, output ----------------------------------------------------------
    def zero_filled_complex(self, context: Context) -> Tensor:
        """SENSE-combined zero-filled image ``A^H y`` of the measured data in units of ``u``: ``(D, 2, H, W)``."""
        meas = context.extra["measured"]
        if "bases" in context.extra:  # measured k-space (a fastMRI file)
            bases, scale = context.extra["bases"], context.meta["scale"]
            return torch.cat([b.adjoint(meas[i:i + 1]) for i, b in enumerate(bases)]) / scale
        m = meas[0] if meas.dim() == 5 else meas
        return context.extra["base"].adjoint(m)

    def baseline(self, problem: Problem, context: Context) -> Tensor:
        """Zero-filled SENSE reconstruction (``A^H y``, coil-combined) in the prior's domain."""
        zf = self.zero_filled_complex(context)  # (D, 2, H, W), units of u
        x = 2.0 * zf.square().sum(1, keepdim=True).sqrt() - 1.0 if self.image_model == "magnitude" else zf
        if len(problem.image_shape) == 4:
            x = x.transpose(0, 1)[None]
        return x.to(self.dtype)

    def to_physical(self, x: Tensor, context: Context) -> Tensor:
        """Magnitude in the input's units, one channel: ``offset + scale x`` or ``scale |x|`` (complex)."""
        if self.image_model == "complex":
            return context.intensity.scale * x.square().sum(1, keepdim=True).sqrt()
        return context.intensity.to_physical(x)

    def write(self, result: Any, context: Context, out_dir: Path) -> list[Path]:
        mean = self.to_physical(result.mean, context)[0]  # (1, [D,] H, W)
        std = None
        if result.std is not None:
            if self.image_model == "complex":
                std = self.to_physical(result.samples[0], context).std(0)  # (S, 1, ...) -> (1, ...)
            else:
                std = context.intensity.scale * result.std[0]
        if "volume" in context.extra:  # measured k-space: a fastMRI-layout file
            return self._write_fastmri(mean, std, context, Path(out_dir))
        return write_stack_nifti(out_dir, context.extra["stack"], mean, std,
                                 ("sciprior MRI reconstruction", "sciprior posterior std"))

    def _write_fastmri(self, mean: Tensor, std: Tensor | None, context: Context, out_dir: Path) -> list[Path]:
        vol = context.extra["volume"]
        h, w = mean.shape[-2:]
        rh, rw = context.meta["recon_size"]
        crop = (rh, rw) if (0 < rh <= h and 0 < rw <= w) else (h, w)

        def cropped(x: Tensor) -> np.ndarray:  # (1, [D,] H, W) -> (D, rH, rW) float32
            a = x.detach().cpu().double()[0]
            return center_crop(a[None] if a.dim() == 2 else a, crop).numpy().astype(np.float32)

        rec = cropped(mean)
        kspace = context.extra["written_kspace"].detach().cpu()
        kspace = kspace if vol.multicoil else kspace[:, 0]
        mask = context.extra["mask"].cpu().numpy()
        mask = mask[0] if mask.shape[0] == 1 or context.meta["readout_cropped_to"] else mask
        attrs = {k: v for k, v in vol.attrs.items() if isinstance(v, (str, int, float, bool, np.generic))}
        attrs.update({"max": float(rec.max()), "norm": float(np.linalg.norm(rec)),
                      "acceleration": float(context.meta["acceleration_actual"]),
                      "sciprior_slices": np.asarray(context.meta["slices"], dtype=np.int64),
                      "sciprior_source": str(context.paths[0])})
        rkey = "reconstruction_rss" if vol.multicoil else "reconstruction_esc"
        name = Path(context.paths[0]).name
        out = out_dir / (name if name.endswith((".h5", ".hdf5")) else f"{name}.h5")
        written = [write_fastmri(out, kspace, mask=mask, attrs=attrs, ismrmrd_header=vol.header.xml or None,
                                 **{rkey: rec})]
        if std is not None:
            written.append(write_fastmri(out_dir / f"std_{out.name}", kspace, mask=mask,
                                         ismrmrd_header=vol.header.xml or None, **{rkey: cropped(std)}))
        return written

    # -- display -------------------------------------------------------------------------------------
    def measurement_image(self, problem: Problem, context: Context) -> tuple[np.ndarray, str] | None:
        meas = context.extra["measured"]
        k = meas.reshape(-1, *meas.shape[-3:])
        k = k[k.shape[0] // 2]  # middle slice (C, H, W)
        rss = k.abs().square().sum(0).sqrt()
        img = torch.log10(rss.clamp_min(1e-6 * float(rss.max()) + 1e-30))
        return img.cpu().numpy(), f"k-space (log10 |y|, RSS over {k.shape[0]} coil(s))"

    def check_trained_domain(self, trained: Any) -> str | None:
        """A message if the prior was trained on another modality, percentile normalisation or image model."""
        msg = super().check_trained_domain(trained)
        if msg or trained is None:
            return msg
        p = trained.args.get("percentiles")
        per_slice = trained.args.get("scale") == "slice"  # the map of measured k-space: percentiles play no part
        if trained.reader == "slices" and p is not None and not per_slice:
            p = tuple(float(v) for v in p)
            if any(abs(a - b) > 1e-9 for a, b in zip(p, self.percentiles)):
                return (f"{key('percentiles')}={list(self.percentiles)} but the prior was trained with percentiles "
                        f"{list(p)}; set percentiles to {list(p)}")
        if per_slice and float(trained.args.get("scale_percentile", SCALE_PERCENTILE)) != self.scale_percentile:
            return (f"{key('scale_percentile')}={self.scale_percentile:g} but the prior was trained with "
                    f"scale_percentile {trained.args.get('scale_percentile')}; set it to that")
        out = trained.args.get("output", "magnitude" if trained.reader == "slices" else None)
        if out in ("magnitude", "complex") and out != self.image_model:
            return (f"{key('image_model')}={self.image_model!r} but the prior was trained on {out} images; set "
                    f"image_model: {out}")
        return None

    # -- report ----------------------------------------------------------------------------------
    def scored(self, x: Tensor) -> Tensor:
        """Complex (2-channel) images are scored and shown on their magnitude."""
        return magnitude(x) if self.image_model == "complex" else x

    def data_range(self, reference: Tensor) -> float:
        return float(reference.max()) if self.image_model == "complex" else 2.0

    @property
    def preview_range(self) -> tuple[float | None, float | None]:
        return (0.0, None) if self.image_model == "complex" else (-1.0, 1.0)

    def metrics_domain(self, context: Context) -> dict[str, Any]:
        d = super().metrics_domain(context)
        if self.image_model == "complex":
            del d["data_range"]
            d["scored_on"] = "magnitude of the complex image; data_range = max |reference|"
        return d

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_model": self.image_model, "acceleration": self.acceleration,
                "center_fraction": self.center_fraction, "mask_type": self.mask_type}


__all__ = ["MRIAdapter", "default_center_fraction", "has_kspace"]
