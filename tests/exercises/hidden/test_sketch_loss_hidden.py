"""Exercise sketch_loss, hidden tests: the block means and the mean square checked by loops, and the gradient."""

import pytest
import torch

from minidalle2.decoder import Decoder, DecoderConfig
from minidalle2.unet import UNetConfig

pytestmark = pytest.mark.ex_sketch_loss


def decoder(k, size) -> Decoder:
    torch.manual_seed(1)
    unet = UNetConfig(image_size=size, base_channels=8, channel_mult=[1], attention_resolutions=[], heads=1,
                      embed_dim=4, text_width=0, patch=1, z_i_map=0, z_i_layout=0, z_i_sketch=k)
    return Decoder(DecoderConfig(unet=unet, timesteps=10, schedule="linear", use_text_tokens=False))


def test_matches_block_means_by_loops():
    k, S = 4, 16
    model = decoder(k, S)
    g = torch.Generator().manual_seed(2)
    x0, z_i = torch.rand(2, 3, S, S, generator=g) * 2 - 1, torch.randn(2, 4, generator=g)
    with torch.no_grad():
        sketch = model.unet.sketch_of(z_i)
    b = S // k
    total = 0.0
    for n in range(2):
        for c in range(3):
            for r in range(k):
                for q in range(k):
                    mean = x0[n, c, r * b:(r + 1) * b, q * b:(q + 1) * b].mean().item()
                    total += (sketch[n, c, r, q].item() - mean) ** 2
    assert model.sketch_loss(x0, z_i).item() == pytest.approx(total / (2 * 3 * k * k), rel=1e-4)


def test_trains_the_sketch_only():
    model = decoder(2, 16)
    x0, z_i = torch.rand(3, 3, 16, 16) * 2 - 1, torch.randn(3, 4)
    model.sketch_loss(x0, z_i).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.sketch.parameters())
    others = [p for name, p in model.named_parameters() if not name.startswith("unet.sketch.")]
    assert all(p.grad is None for p in others)
