"""Issue 24 (docs/two_objects.json, prior_side.target): the full preset's diffusion prior with another target or loss
weighting than the paper's x_0 with L_simple. The layout of two objects lives in directions of z_i that carry about
1 % of its variance; in x_0 = sqrt(D) z_i their signal-to-noise ratio reaches 1 only where the whole embedding's is
about 25, late in sampling, where L_simple on x_0 weighs an error no more than at t = T. A v target (Salimans & Ho
2022) weighs the x_0 error at t by SNR_t + 1; min-SNR (Hang et al. 2023) by min(SNR_t, gamma).

    python docs/scripts/prior_target.py train TARGET WEIGHTING RUN [STEPS]   # TARGET: x0 | v | eps;
                                                                             # WEIGHTING: none | min_snr
    python docs/scripts/prior_target.py read TARGET WEIGHTING RUN    # prior_layout and sketch_layout of RUN's prior
    python docs/scripts/prior_target.py pipeline TARGET WEIGHTING RUN   # evaluate pipeline --rows diffusion, 3 seeds

RUN: a copy of the shipped run, its train split cached, without prior_diffusion/ (train)."""
import dataclasses
import json
import sys

import torch

from minidalle2 import presets
from minidalle2.diffusion import GaussianDiffusion
from minidalle2.evaluation.layout import prior_layout, sketch_layout
from minidalle2.prior_diffusion import DiffusionPrior
from minidalle2.tools.cli import main

torch.set_num_threads(2)
what, target, weighting, RUN = sys.argv[1:5]
built = DiffusionPrior.__init__


def __init__(self, cfg, *args, **kwargs):
    """The prior as built, its diffusion predicting ``target`` with ``weighting``."""
    built(self, cfg, *args, **kwargs)
    self.diffusion = GaussianDiffusion(cfg.timesteps, cfg.schedule, predict=target, loss_weighting=weighting)


DiffusionPrior.__init__ = __init__
if what == "read":
    print(json.dumps({"prior_layout": prior_layout(RUN), "sketch_layout": sketch_layout(RUN)}), flush=True)
    sys.exit(0)
if what == "pipeline":
    sys.exit(main(["evaluate", "pipeline", "--run-dir", RUN, "--rows", "diffusion", "--seeds", "0,1,2",
                   "--json", f"{RUN}/pipeline.json"]))
if len(sys.argv) > 5:  # the full preset's training stretched to STEPS steps (its cosine schedule with it)
    full = presets.PRIOR_DIFFUSION["full"]
    presets.PRIOR_DIFFUSION["full"] = dataclasses.replace(full, train=dataclasses.replace(
        full.train, steps=int(sys.argv[5]), ckpt_every=int(sys.argv[5]) // 4))
sys.exit(main(["train", "prior-diffusion", "--preset", "full", "--run-dir", RUN, "--no-progress"]))
