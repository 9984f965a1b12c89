"""Exercise causal_mask: query k may attend to keys 0..k that are not padding."""

import pytest
import torch

from minidalle2.transformer import attention_mask

pytestmark = pytest.mark.ex_causal_mask


def test_causal_mask_matches_a_loop():
    mask = attention_mask(5)
    assert mask.dtype == torch.bool
    mask = mask.expand(1, 1, 5, 5)  # broadcasts over the batch and the heads
    for q in range(5):
        for k in range(5):
            assert mask[0, 0, q, k].item() == (k <= q), (q, k)


def test_padding_keys_are_hidden_from_every_query():
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 1]]).bool()  # (B, T)
    mask = attention_mask(5, key_mask).expand(3, 1, 5, 5)
    for b in range(3):
        for q in range(5):
            for k in range(5):
                assert mask[b, 0, q, k].item() == (k <= q and key_mask[b, k].item()), (b, q, k)
