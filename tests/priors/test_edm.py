"""EDM preconditioning, loss and the MONAI UNet builder."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sciprior.priors.analytic import GaussianPrior
from sciprior.priors.edm import EDMDenoiser
from sciprior.priors.networks import build_unet, count_parameters, unet_config, unet_size_multiple

TINY = dict(channels=(8, 16), attention_levels=(False, True), num_head_channels=8, norm_num_groups=8)


def randomize(net: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Fill every parameter with noise (MONAI zero-initialises the output convolutions)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


class OracleNet(nn.Module):
    """The raw network F whose EDM-preconditioned output is a GaussianPrior's exact D.

    The EDM coefficients are written out here from the paper (Table 1), independently of edm.py.
    """

    def __init__(self, prior: GaussianPrior, sigma_data: float):
        super().__init__()
        self.prior = prior
        self.sd = sigma_data

    def forward(self, x_in, c_noise):
        s = torch.exp(4 * c_noise).reshape(-1, *([1] * (x_in.dim() - 1)))
        sd = self.sd
        x = x_in * torch.sqrt(s**2 + sd**2)
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        return (self.prior(x, s.reshape(-1)) - c_skip * x) / c_out


def random_gaussian(shape=(1, 4, 4), seed=0, scale=0.5) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = scale**2 * (q @ q.T / d + 0.2 * torch.eye(d, dtype=torch.float64))
    return GaussianPrior(0.1 * torch.randn(d, generator=g, dtype=torch.float64), cov, image_shape=shape)


# -- builder ---------------------------------------------------------------------------------------

def test_build_unet_records_config_and_rebuilds():
    net = build_unet(**TINY)
    cfg = unet_config(net)
    assert cfg["out_channels"] == cfg["in_channels"] == 1
    assert cfg["channels"] == [8, 16] and cfg["num_res_blocks"] == [1, 1]
    assert cfg["num_head_channels"] == [8, 8]
    again = build_unet(**cfg)
    a, b = net.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert count_parameters(net) == count_parameters(again) > 0
    assert unet_size_multiple(net) == 2 and unet_size_multiple(build_unet()) == 4


@pytest.mark.parametrize("kwargs, key", [
    (dict(channels=(8, 12), norm_num_groups=8), "norm_num_groups"),
    (dict(channels=(8, 16), attention_levels=(False,), norm_num_groups=8), "attention_levels"),
    (dict(channels=(16, 16), attention_levels=(True, False), num_head_channels=(12, 8), norm_num_groups=8),
     "num_head_channels[0]"),
    (dict(channels=(16, 16), attention_levels=(False, False), num_head_channels=32, norm_num_groups=8),
     "middle block"),
    (dict(spatial_dims=1), "spatial_dims"),
])
def test_build_unet_errors_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        build_unet(**kwargs)


def test_unet_takes_fractional_c_noise_2d_and_3d():
    net2 = randomize(build_unet(**TINY), std=0.2).double()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # c_noise = ln(sigma)/4: negative and non-integer; nearby values must give different outputs
    t = torch.tensor([-1.3, 0.10, 0.11], dtype=torch.float64)
    out = net2(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    same_x = net2(x[1:2].expand(2, -1, -1, -1), t[1:])
    assert (same_x[0] - same_x[1]).abs().max() > 1e-4 * same_x.abs().max()

    net3 = build_unet(spatial_dims=3, in_channels=2, **TINY)
    den3 = EDMDenoiser(randomize(net3), image_shape=(2, 4, 8, 8))
    x3 = torch.randn(2, 2, 4, 8, 8)
    d3 = den3(x3, torch.tensor([0.3, 2.0]))
    assert d3.shape == x3.shape and torch.isfinite(d3).all()


# -- preconditioning ---------------------------------------------------------------------------------

def test_preconditioning_identities():
    den = EDMDenoiser(build_unet(**TINY), sigma_data=0.7)
    s = torch.logspace(-4, 2, 25, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = den.preconditioning(s)
    sd = 0.7
    torch.testing.assert_close(c_skip + c_out**2 / sd**2, torch.ones_like(s), rtol=0, atol=1e-14)
    torch.testing.assert_close(c_in**2 * (s**2 + sd**2), torch.ones_like(s), rtol=0, atol=1e-14)
    torch.testing.assert_close(c_noise, torch.log(s) / 4, rtol=0, atol=1e-14)
    # the EDM weight makes the effective training weight of F equal to 1
    torch.testing.assert_close(den.loss_weight(s) * c_out**2, torch.ones_like(s), rtol=1e-12, atol=0)
    assert (c_skip.diff() < 0).all() and c_skip[0] > 1 - 1e-7 and c_skip[-1] < 1e-4


def test_zero_network_gives_c_skip_and_sigma_zero_gives_identity():
    net = build_unet(**TINY)  # MONAI zero-initialises the output conv: F == 0
    den = EDMDenoiser(net, sigma_data=0.5)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.2, 3.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    # bitwise: with F == 0 exactly, D = c_skip x + c_out * 0 is the same elementwise arithmetic
    torch.testing.assert_close(den(x, sigma), c_skip[:, None, None, None] * x, rtol=0, atol=0)
    den_r = EDMDenoiser(randomize(build_unet(**TINY)))
    out0 = den_r(x, 0.0)
    assert torch.equal(out0, x)  # c_skip = 1, c_out = 0, c_noise finite
    out_small = den_r(x, 1e-6)
    assert (out_small - x).abs().max() < 1e-5


def test_oracle_network_reproduces_exact_gaussian_denoiser():
    prior = random_gaussian((1, 4, 4))
    den = EDMDenoiser(OracleNet(prior, 0.5), sigma_data=0.5, image_shape=(1, 4, 4))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(den(x, sigma), prior(x, sigma), rtol=0, atol=1e-10)


def test_loss_of_exact_denoiser():
    """For i.i.d. N(0, sd^2) pixels the EDM loss of the exact denoiser is 1 at every sigma; for a
    correlated Gaussian the unweighted error is the analytic MMSE mean_i(l_i s^2 / (l_i + s^2))."""
    sd, d = 0.5, 64
    iid = GaussianPrior(torch.zeros(d, dtype=torch.float64), sd**2 * torch.eye(d, dtype=torch.float64),
                        image_shape=(1, 8, 8))
    den = EDMDenoiser(OracleNet(iid, sd), sigma_data=sd)
    g = torch.Generator().manual_seed(0)
    x0 = iid.sample(2000, generator=g)
    loss, items = den.loss(x0, generator=g, per_item=True)
    assert items.shape == (2000,) and torch.isclose(loss, items.mean())
    # per-item loss is a mean of 64 chi^2_1: sd of the batch mean = sqrt(2 / (64 * 2000)) = 0.004
    assert abs(loss.item() - 1) < 0.02
    at = den.denoise_loss_at(x0, [0.05, 1.0, 20.0], generator=g)
    assert at.shape == (3,) and (at - 1).abs().max() < 0.02

    prior = random_gaussian((1, 4, 4), seed=3)
    den = EDMDenoiser(OracleNet(prior, 0.5), sigma_data=0.5)
    x0 = prior.sample(4000, generator=g)
    sig = torch.tensor([0.1, 0.5, 3.0], dtype=torch.float64)
    mse = den.denoise_loss_at(x0, sig, generator=g, weighted=False)
    exact = (prior.evals * sig[:, None] ** 2 / (prior.evals + sig[:, None] ** 2)).mean(1)
    torch.testing.assert_close(mse, exact, rtol=0.03, atol=0)
    weighted = den.denoise_loss_at(x0, sig, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(weighted, den.loss_weight(sig) * exact, rtol=0.03, atol=0)


def test_loss_is_reproducible_and_differentiable():
    den = EDMDenoiser(randomize(build_unet(**TINY)))
    x0 = 0.5 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    l1 = den.loss(x0, generator=torch.Generator().manual_seed(5))
    l2 = den.loss(x0, generator=torch.Generator().manual_seed(5))
    l3 = den.loss(x0, generator=torch.Generator().manual_seed(6))
    assert l1.dim() == 0 and torch.equal(l1, l2) and not torch.equal(l1, l3)  # bitwise: a rerun, same seed
    l1.backward()
    grads = [p.grad for p in den.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_dtype_and_device_follow_the_input():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    den64 = EDMDenoiser(randomize(build_unet(**TINY)).double())
    assert den64(x, 0.5).dtype == torch.float64
    den32 = EDMDenoiser(randomize(build_unet(**TINY)))
    out = den32(x, torch.tensor([0.5, 1.0]))  # network runs in float32, D comes back in float64
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), den32(x.float(), torch.tensor([0.5, 1.0])), rtol=1e-5, atol=1e-6)
    # nothing is created on a fixed device: the whole forward and loss run on the meta device
    den_meta = EDMDenoiser(build_unet(**TINY).to("meta"))
    xm = torch.empty(2, 1, 8, 8, device="meta")
    assert den_meta(xm, 0.3).device.type == "meta"
    assert den_meta.loss(xm).device.type == "meta"


def test_input_checks_name_the_shape():
    den = EDMDenoiser(build_unet(**TINY), image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="multiples of 2"):
        den(torch.randn(1, 1, 8, 7), 1.0)
    with pytest.raises(ValueError, match="image_shape"):
        den(torch.randn(1, 2, 8, 8), 1.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        den(torch.randn(8, 8), 1.0)
    with pytest.raises(ValueError, match="sigma has 3 entries"):
        den(torch.randn(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="sigma_data"):
        EDMDenoiser(nn.Identity(), sigma_data=0)


def _gaussian_field(n: int, size: int, g: torch.Generator, width: float = 0.08) -> torch.Tensor:
    """Stationary Gaussian random field on a periodic size x size grid (FFT-filtered white noise)."""
    k = torch.fft.fftfreq(size)
    filt = torch.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * width**2))
    w = torch.randn(n, 1, size, size, generator=g)
    return torch.fft.ifft2(torch.fft.fft2(w) * filt).real


def test_tiny_unet_learns_a_gaussian_field():
    """60 Adam steps on 1x16x16 Gaussian fields: the loss drops and the denoiser beats the best
    pointwise shrinkage (its own initial c_skip x) at sigma = 0.5."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    scale = 0.5 / _gaussian_field(2048, 16, g).std()  # data standard deviation = sigma_data = 0.5
    net = build_unet(channels=(16, 32), attention_levels=(False, False), num_head_channels=8,
                     norm_num_groups=8)
    den = EDMDenoiser(net, sigma_data=0.5)
    val = scale * _gaussian_field(256, 16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = den.denoise_loss_at(val, [0.5], generator=torch.Generator().manual_seed(3), weighted=False)
    # at init F == 0 so D = c_skip x, the best pointwise linear shrinkage: MSE = 0.25 * 0.25 / 0.5
    assert abs(before.item() - 0.125) < 0.01
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(60):
        loss = den.loss(scale * _gaussian_field(16, 16, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < 0.6 * first
    with torch.no_grad():
        after = den.denoise_loss_at(val, [0.5], generator=torch.Generator().manual_seed(3), weighted=False)
    # measured ~0.034 (the exact Wiener MMSE of this field is ~0.020)
    assert after.item() < 0.5 * before.item()
