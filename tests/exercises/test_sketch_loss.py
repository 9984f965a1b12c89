"""Exercise sketch_loss: L_sketch = mean || sketch(z_i) - pool_k(x_0) ||^2, the decoder's picture of E[x_0 | z_i]."""

import pytest
import torch

from minidalle2.decoder import Decoder, DecoderConfig
from minidalle2.unet import UNetConfig

pytestmark = pytest.mark.ex_sketch_loss


def decoder(k=2, size=16) -> Decoder:
    torch.manual_seed(0)
    unet = UNetConfig(image_size=size, base_channels=8, channel_mult=[1], attention_resolutions=[], heads=1,
                      embed_dim=4, text_width=0, patch=1, z_i_map=0, z_i_layout=0, z_i_sketch=k)
    return Decoder(DecoderConfig(unet=unet, timesteps=10, schedule="linear", use_text_tokens=False))


def test_a_sketch_of_the_pooled_image_costs_nothing():
    model = decoder(k=2)
    z_i = torch.randn(3, 4)
    with torch.no_grad():
        sketch = model.unet.sketch_of(z_i)  # (3, 3, 2, 2)
    x0 = sketch.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # each cell an 8x8 block of one value
    assert model.sketch_loss(x0, z_i).item() == pytest.approx(0.0, abs=1e-10)


def test_a_constant_error_gives_its_square():
    model = decoder(k=2)
    z_i = torch.randn(2, 4)
    with torch.no_grad():
        sketch = model.unet.sketch_of(z_i)
    x0 = (sketch + 0.5).repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    loss = model.sketch_loss(x0, z_i)
    assert loss.shape == () and loss.item() == pytest.approx(0.25, rel=1e-5)
