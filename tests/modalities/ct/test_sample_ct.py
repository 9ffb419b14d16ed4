"""Real CT sample shipped by pydicom-data (head) and pydicom (CT_small): no network access."""

import socket

import numpy as np
import pytest
import torch

from sciprior.modalities.ct import CTNormalization
from sciprior.modalities.ct.samples import ct_head_paths, load_sample_ct, sample_ct_path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sample data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_head_ct_loads_offline(no_network):
    s = load_sample_ct("head")
    assert s.hu.shape == (1, 1, 512, 512) and s.hu.dtype == torch.float32
    assert s.pixel_size == pytest.approx(0.478516)
    assert s.source.header.Modality == "CT"
    # real head CT: air, brain (~20-60 HU) and skull (> 1000 HU), padding outside the 245 mm FOV
    hu = s.hu[0, 0]
    brain = hu[200:300, 200:300]
    assert -20 < float(brain.median()) < 80
    assert float(hu.max()) > 1000 and float(hu.min()) == -1024
    assert 0.6 < float(s.fov_mask.float().mean()) < 0.95
    assert torch.allclose(s.mu, 0.0192 * (1 + s.hu / 1000).clamp_min(0))
    assert float(s.normalized.min()) >= -1 and float(s.normalized.max()) <= 1
    assert ct_head_paths() == [sample_ct_path("head")]


def test_downsampled_and_small_samples(no_network):
    s = load_sample_ct("head", size=256, normalization=CTNormalization(-1000, 1000))
    full = load_sample_ct("head")
    assert s.hu.shape == (1, 1, 256, 256) and s.pixel_size == pytest.approx(2 * 0.478516)
    assert np.isclose(float(s.hu.mean()), float(full.hu.mean()), atol=1e-2)
    assert torch.allclose(s.normalized, (s.hu / 1000).clamp(-1, 1), atol=1e-6)
    small = load_sample_ct("small")
    assert small.hu.shape == (1, 1, 128, 128) and small.pixel_size == pytest.approx(0.661468)
    with pytest.raises(ValueError, match="size 100 must divide"):
        load_sample_ct("head", size=100)
    with pytest.raises(KeyError, match="unknown sample 'lung'"):
        sample_ct_path("lung")
