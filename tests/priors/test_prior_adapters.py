"""Epsilon/v/x0-prediction DDPM nets and rectified-flow velocity nets behind D(x, sigma).

Exact networks are built from a GaussianPrior (its D is known in closed form); the adapters must
turn them back into exactly that D.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from sciprior.priors.analytic import GaussianPrior
from sciprior.priors.external import EpsilonDenoiser, FlowDenoiser
from sciprior.priors.networks import build_unet


def random_gaussian(shape=(1, 4, 4), seed=0) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = 0.25 * (q @ q.T / d + 0.2 * torch.eye(d, dtype=torch.float64))
    return GaussianPrior(0.1 * torch.randn(d, generator=g, dtype=torch.float64), cov, image_shape=shape)


def ddpm_abar() -> torch.Tensor:
    return DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()


def bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class ExactDDPMNet(nn.Module):
    """The exact DDPM network of a Gaussian prior, for the timesteps of a discrete sampling_sigmas.

    sigma(t) at fractional t is np.interp of log-sigma over the integer grid (written here
    independently of the adapter's searchsorted version).
    """

    def __init__(self, prior: GaussianPrior, abar: torch.Tensor, prediction: str):
        super().__init__()
        self.prior = prior
        self.log_sig = 0.5 * np.log((1 - abar.numpy()) / abar.numpy())
        self.prediction = prediction
        self.seen_t: list[torch.Tensor] = []

    def forward(self, x_t, t):
        self.seen_t.append(t)
        ls = np.interp(t.double().numpy(), np.arange(len(self.log_sig)), self.log_sig)
        s = torch.as_tensor(np.exp(ls), dtype=x_t.dtype)
        ab = 1 / (1 + s**2)  # abar at that sigma
        x = x_t / bc(ab.sqrt(), x_t)
        x0 = self.prior(x, s)
        eps = (x - x0) / bc(s, x)
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "v_prediction":
            return bc(ab.sqrt(), x) * eps - bc((1 - ab).sqrt(), x) * x0
        return x0


class ExactFlowNet(nn.Module):
    """The exact velocity E[eps - x0 | x_t] of a Gaussian prior; t arrives multiplied by time_scale."""

    def __init__(self, prior: GaussianPrior, time_scale: float):
        super().__init__()
        self.prior = prior
        self.time_scale = time_scale

    def forward(self, x_t, tt):
        t = tt / self.time_scale
        s = t / (1 - t)
        x = x_t / bc(1 - t, x_t)  # x_t = (1-t) x0 + t eps  =>  x = x_t / (1-t) = x0 + s eps
        x0 = self.prior(x, s)
        eps = (x - x0) / bc(s, x)
        return eps - x0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddpm_adapter_reproduces_exact_denoiser(prediction):
    prior = random_gaussian()
    abar = ddpm_abar()
    den = EpsilonDenoiser(ExactDDPMNet(prior, abar, prediction), abar, prediction_type=prediction)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    table = ((1 - abar) / abar).sqrt()
    on_table = table[[0, 17, 500, 998, 999]]
    off_table = torch.tensor([0.0123, 0.07, 0.9, 13.0, 150.0], dtype=torch.float64)
    for sigma in (on_table, off_table):
        torch.testing.assert_close(den(x, sigma), prior(x, sigma), rtol=0, atol=1e-9)
    t = den.net.seen_t[-1]
    assert t.dtype == torch.float64 and (t != t.round()).any()  # fractional timesteps were used


def test_ddpm_nearest_mode_snaps_to_the_table():
    prior = random_gaussian()
    abar = ddpm_abar()
    net = ExactDDPMNet(prior, abar, "epsilon")
    den = EpsilonDenoiser(net, abar, timestep_mode="nearest")
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    on = den.sigma_table[[3, 400, 999]]
    torch.testing.assert_close(den(x, on), prior(x, on), rtol=0, atol=1e-9)
    t = net.seen_t[-1]
    assert t.dtype == torch.long and t.tolist() == [3, 400, 999]
    # halfway (in log sigma) between entries 400 and 401 plus a bit: rounds to 401, so D is not exact there
    mid = (0.4 * den.log_sigmas[400] + 0.6 * den.log_sigmas[401]).exp().reshape(1)
    assert den.sigma_to_t(mid).item() == 401
    assert not torch.allclose(den(x[:1], mid), prior(x[:1], mid), rtol=0, atol=1e-9)


def test_ddpm_sigma_t_round_trips():
    abar = ddpm_abar()
    den = EpsilonDenoiser(nn.Identity(), abar)
    torch.testing.assert_close(den.sigma_table, ((1 - abar) / abar).sqrt(), rtol=1e-12, atol=0)
    assert den.sigma_min == pytest.approx(float(den.sigma_table[0]))
    assert den.sigma_max == pytest.approx(float(den.sigma_table[-1]))
    s = torch.logspace(np.log10(den.sigma_min), np.log10(den.sigma_max), 57, dtype=torch.float64)
    torch.testing.assert_close(den.t_to_sigma(den.sigma_to_t(s)), s, rtol=1e-12, atol=0)
    t = torch.linspace(0, 999, 41, dtype=torch.float64) + 0.37 * torch.rand(41, dtype=torch.float64)
    t = t.clamp(max=999)
    torch.testing.assert_close(den.sigma_to_t(den.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    ints = torch.arange(0, 1000, 37)
    torch.testing.assert_close(den.sigma_to_t(den.sigma_table[ints]), ints.double(), rtol=0, atol=1e-9)
    assert (den.sigma_to_t(s).diff() > 0).all()
    # outside the table t is clamped
    assert den.sigma_to_t(torch.tensor([1e-5, 1e4])).tolist() == [0.0, 999.0]


def test_ddpm_adapter_checks():
    with pytest.raises(ValueError, match="strictly decreasing"):
        EpsilonDenoiser(nn.Identity(), torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match=r"inside \(0, 1\)"):
        EpsilonDenoiser(nn.Identity(), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="prediction_type"):
        EpsilonDenoiser(nn.Identity(), torch.tensor([0.9, 0.5]), prediction_type="score")


def test_ddpm_adapter_runs_a_monai_unet_with_fractional_timesteps():
    net = build_unet(channels=(8, 16), attention_levels=(False, False), num_head_channels=8,
                     norm_num_groups=8)
    abar = ddpm_abar()
    for mode in ("interp", "nearest"):
        den = EpsilonDenoiser(net, abar, timestep_mode=mode)
        x = torch.randn(2, 1, 8, 8)
        out = den(x, torch.tensor([0.05, 3.0]))
        assert out.shape == x.shape and out.dtype == x.dtype
        torch.testing.assert_close(out, x)  # fresh MONAI UNet outputs 0: D = x - sigma * 0


def test_flow_adapter_reproduces_exact_denoiser():
    prior = random_gaussian(seed=4)
    for time_scale in (1.0, 1000.0):
        den = FlowDenoiser(ExactFlowNet(prior, time_scale), time_scale=time_scale)
        x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        sigma = torch.tensor([0.002, 0.4, 5.0, 80.0], dtype=torch.float64)
        torch.testing.assert_close(den(x, sigma), prior(x, sigma), rtol=0, atol=1e-9)


def test_flow_sigma_t_round_trips():
    s = torch.logspace(-3, 3, 50, dtype=torch.float64)
    t = FlowDenoiser.sigma_to_t(s)
    assert (t > 0).all() and (t < 1).all() and (t.diff() > 0).all()
    torch.testing.assert_close(FlowDenoiser.t_to_sigma(t), s, rtol=1e-12, atol=0)
    tt = torch.linspace(0, 0.99, 34, dtype=torch.float64)
    torch.testing.assert_close(FlowDenoiser.sigma_to_t(FlowDenoiser.t_to_sigma(tt)), tt, rtol=0, atol=1e-14)
    # x_t = (1 - t) x0 + t eps is x0 + sigma eps scaled by 1 / (1 + sigma)
    torch.testing.assert_close(1 - t, 1 / (1 + s), rtol=0, atol=1e-15)  # 1 - t cancels near t = 1
    torch.testing.assert_close(t, s / (1 + s), rtol=1e-14, atol=0)
