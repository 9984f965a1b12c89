"""Exercise zi_conditioning, hidden tests: caption tokens come after z_i's, and both paths reach the output."""

import pytest
import torch


pytestmark = pytest.mark.ex_zi_conditioning


@torch.no_grad()
def test_context_is_z_i_tokens_then_caption_tokens(tiny_unet):
    unet = tiny_unet(text_width=5)
    z_i, text, text_mask = torch.randn(2, 6), torch.randn(2, 3, 5), torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
    ctx, mask = unet.context(z_i, text, text_mask)
    alone, _ = unet.context(z_i)
    assert ctx.shape == (2, 4 + 3, unet.cfg.emb_dim)
    torch.testing.assert_close(ctx[:, :4], alone)
    torch.testing.assert_close(ctx[:, 4:], unet.context_norm(unet.text_proj(text)))
    assert mask.tolist() == [[True] * 4 + [True, True, False], [True] * 7]


def test_both_z_i_paths_reach_the_output(tiny_unet):
    """The output layers start at zero, so give every weight a random value first; then the prediction must move
    with z_i, and the gradient must reach both of z_i's projections."""
    unet = tiny_unet()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.2)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    z_i = torch.randn(2, 6)
    out = unet(x_t, t, z_i)
    assert not torch.allclose(out, unet(x_t, t, z_i + 1))
    out.square().mean().backward()
    assert unet.z_i_embed.weight.grad.abs().sum() > 0 and unet.z_i_tokens.weight.grad.abs().sum() > 0
