"""Exercise prior_sequence: the diffusion prior reads [caption tokens | z_t | t | z_i^(t) | final token]."""

import pytest
import torch
import torch.nn.functional as F

from minidalle2.prior_diffusion import DiffusionPrior, DiffusionPriorConfig
from minidalle2.transformer import timestep_embedding

pytestmark = pytest.mark.ex_prior_sequence

C = 8  # width


def tiny_prior():
    cfg = DiffusionPriorConfig(width=C, layers=1, heads=2, timesteps=100, schedule="linear")
    return DiffusionPrior(cfg, embed_dim=4, text_width=6, context_length=5)


def inputs():
    text = torch.randn(3, 5, 6)  # (B, L, W) caption token features
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()  # the longest has 4 tokens
    return torch.randn(3, 4), torch.tensor([0, 50, 99]), text, mask, F.normalize(torch.randn(3, 4), dim=-1)


@torch.no_grad()
def test_each_position_holds_its_token():
    prior = tiny_prior()
    x_t, t, text, mask, z_t = inputs()
    seq, key_mask = prior.sequence(x_t, t, text, mask, z_t)
    L = 4  # padding after the longest caption is cut off
    assert seq.shape == (3, L + 4, C) and key_mask.shape == (3, L + 4)
    torch.testing.assert_close(seq[:, :L], prior.caption.text_in(text[:, :L]))
    torch.testing.assert_close(seq[:, L], prior.caption.z_t_in(z_t * prior.scale))
    torch.testing.assert_close(seq[:, L + 1], prior.time_in(timestep_embedding(t, C)))
    torch.testing.assert_close(seq[:, L + 2], prior.z_i_in(x_t))
    torch.testing.assert_close(seq[:, L + 3], prior.final_token.expand(3, C))


@torch.no_grad()
def test_key_mask_hides_caption_padding_only():
    x_t, t, text, mask, z_t = inputs()
    _, key_mask = tiny_prior().sequence(x_t, t, text, mask, z_t)
    assert key_mask.dtype == torch.bool
    assert torch.equal(key_mask, torch.cat([mask[:, :4], torch.ones(3, 4, dtype=torch.bool)], dim=1))
