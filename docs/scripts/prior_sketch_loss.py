"""Issue 24 (docs/two_objects.json, prior_side.sketch_loss): the full preset's diffusion prior trained with the shipped
loss plus the error of its prediction as the decoder's sketch reads it,

    L = mean_D (x^_0 - x_0)^2 + W mean_{3 k k} (s(norm(x^_0)) - s(z_i))^2,

s the shipped decoder's sketch of z_i (frozen, unet.sketch_of), x^_0 the prior's prediction of x_0 = sqrt(D) z_i.
The layout of two objects lives in directions of z_i that carry about 1 % of its variance, so the first term hardly
asks for them; the second weighs z_i's directions by how much they move the picture the decoder starts from.
Sampling is unchanged.

    python docs/scripts/prior_sketch_loss.py train W RUN   # RUN: a copy of the shipped run, its train split cached,
                                                           # without prior_diffusion/
    python docs/scripts/prior_sketch_loss.py read RUN      # prior_layout and sketch_layout of RUN's prior"""
import json
import sys

import torch
import torch.nn.functional as F

from minidalle2 import runs
from minidalle2.evaluation.layout import prior_layout, sketch_layout
from minidalle2.tools.cli import main
from prior_extra_loss import add_term

torch.set_num_threads(2)
what = sys.argv[1]
RUN = sys.argv[2] if what == "read" else sys.argv[3]
if what == "read":
    out = {"prior_layout": prior_layout(RUN), "sketch_layout": sketch_layout(RUN)}
    print(json.dumps(out), flush=True)
    sys.exit(0)

W = float(sys.argv[2])
sketch = runs.load("decoder", RUN).unet
sketch.requires_grad_(False)
terms = []


def sketch_error(prior, predicted, z_i):
    """W mean (s(norm(x^_0)) - s(z_i))^2, the two terms' running means printed every 500 steps."""
    extra = (sketch.sketch_of(F.normalize(predicted, dim=-1)) - sketch.sketch_of(z_i)).square().mean()
    base = ((predicted - z_i * prior.scale) ** 2).mean()  # L_prior of this step, as the loss computes it
    terms.append((base.item(), extra.item()))
    if len(terms) % 500 == 0:
        print("mean of the last 500 steps: L_prior %.4f, sketch term %.5f" % tuple(
            sum(x) / 500 for x in zip(*terms[-500:])), flush=True)
    return W * extra


add_term(sketch_error)
sys.exit(main(["train", "prior-diffusion", "--preset", "full", "--run-dir", RUN, "--no-progress"]))
