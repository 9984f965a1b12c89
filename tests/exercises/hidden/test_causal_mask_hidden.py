"""Exercise causal_mask, hidden tests: a transformer built on the mask cannot see the future or the padding."""

import pytest
import torch

from minidalle2.transformer import CausalTransformer, attention_mask

pytestmark = pytest.mark.ex_causal_mask


@torch.no_grad()
def test_each_output_depends_only_on_its_prefix():
    """Run the transformer on every prefix x[:, :k+1]: its last output must equal output k of the full run."""
    model = CausalTransformer(width=8, layers=2, heads=2, max_len=6).eval()
    x = torch.randn(2, 6, 8)
    full = model(x)
    for k in range(6):
        torch.testing.assert_close(model(x[:, :k + 1])[:, -1], full[:, k], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_tokens_do_not_change_the_others():
    model = CausalTransformer(width=8, layers=1, heads=2, max_len=6).eval()
    x = torch.randn(1, 6, 8)
    key_mask = torch.tensor([[1, 1, 0, 1, 1, 1]]).bool()  # token 2 is padding
    y = x.clone()
    y[0, 2] = 100 * torch.randn(8)
    keep = key_mask[0]
    torch.testing.assert_close(model(x, key_mask)[0, keep], model(y, key_mask)[0, keep])


def test_mask_shapes_broadcast_over_heads():
    assert tuple(attention_mask(3).shape) in {(1, 1, 3, 3), (3, 3)}
    assert attention_mask(3, torch.ones(4, 3, dtype=torch.bool)).shape == (4, 1, 3, 3)
