"""Exercise prior_sequence, hidden tests: the null caption, and the timestep token."""

import pytest
import torch
import torch.nn.functional as F

from minidalle2.prior_diffusion import DiffusionPrior, DiffusionPriorConfig
from minidalle2.transformer import timestep_embedding

pytestmark = pytest.mark.ex_prior_sequence


def tiny_prior():
    cfg = DiffusionPriorConfig(width=8, layers=1, heads=2, timesteps=100, schedule="linear")
    return DiffusionPrior(cfg, embed_dim=4, text_width=6, context_length=5)


@torch.no_grad()
def test_dropped_captions_read_the_learned_null_with_nothing_masked():
    prior = tiny_prior()
    text, mask = torch.randn(2, 5, 6), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]).bool()
    x_t, t, z_t = torch.randn(2, 4), torch.tensor([3, 70]), F.normalize(torch.randn(2, 4), dim=-1)
    seq, key_mask = prior.sequence(x_t, t, text, mask, z_t, drop=torch.tensor([True, False]))
    assert seq.shape == (2, 3 + 4, 8)
    torch.testing.assert_close(seq[0, :3], prior.caption.null_text[:3])
    torch.testing.assert_close(seq[0, 3], prior.caption.null_z_t)
    torch.testing.assert_close(seq[1, :3], prior.caption.text_in(text[1, :3]))
    torch.testing.assert_close(seq[:, 5], prior.z_i_in(x_t))  # z_i^(t) is never dropped
    assert key_mask.all()  # row 0's caption had padding; the null caption has none


@torch.no_grad()
def test_only_the_timestep_token_depends_on_t():
    prior = tiny_prior()
    text, mask = torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool)
    x_t, z_t = torch.randn(2, 4), F.normalize(torch.randn(2, 4), dim=-1)
    a, _ = prior.sequence(x_t, torch.tensor([1, 1]), text, mask, z_t)
    b, _ = prior.sequence(x_t, torch.tensor([1, 90]), text, mask, z_t)
    changed = (a - b).abs().amax(dim=-1) > 0  # (B, L + 4)
    assert changed.tolist() == [[False] * 9, [False] * 6 + [True] + [False] * 2]
    torch.testing.assert_close(b[1, 6], prior.time_in(timestep_embedding(torch.tensor([90]), 8))[0])
