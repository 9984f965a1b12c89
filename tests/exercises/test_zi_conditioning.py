"""Exercise zi_conditioning: z_i is added to the timestep embedding and becomes four extra context tokens."""

import pytest
import torch

from minidalle2.transformer import timestep_embedding

pytestmark = pytest.mark.ex_zi_conditioning


@torch.no_grad()
def test_z_i_is_projected_and_added_to_the_timestep_embedding(tiny_unet):
    unet = tiny_unet()
    t, z_i = torch.tensor([0, 17, 999]), torch.randn(3, 6)
    emb = unet.embedding(t, z_i)
    assert emb.shape == (3, unet.cfg.emb_dim)
    torch.testing.assert_close(emb, unet.time_embed(timestep_embedding(t, 8)) + unet.z_i_embed(z_i))


@torch.no_grad()
def test_z_i_becomes_four_context_tokens(tiny_unet):
    """Token k is the k-th block of E outputs of the z_i_tokens projection, then LayerNorm'd with the rest."""
    unet = tiny_unet()
    z_i = torch.randn(2, 6)
    ctx, mask = unet.context(z_i)
    E = unet.cfg.emb_dim
    W, b = unet.z_i_tokens.weight, unet.z_i_tokens.bias  # (4E, D), (4E,)
    tokens = torch.stack([z_i @ W[k * E:(k + 1) * E].T + b[k * E:(k + 1) * E] for k in range(4)], dim=1)  # (B, 4, E)
    assert ctx.shape == (2, 4, E) and mask.shape == (2, 4) and mask.all()
    torch.testing.assert_close(ctx, unet.context_norm(tokens))
