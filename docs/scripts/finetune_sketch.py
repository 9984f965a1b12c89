"""How the shipped decoder learned to read the sketch of z_i: a record, kept runnable.

The shipped decoder (`full` preset, 24 000 steps) was trained before the U-Net had a sketch (unet.py,
``z_i_sketch``). Rather than 24 000 new steps (2-2.5 hours on this project's 2-core CPU), it was taught to read one:

1. the decoder is rebuilt with ``z_i_sketch = 8``; its trained weights load unchanged, and the new sketch input
   convolution starts at zero, so it begins as the trained decoder;
2. the sketch's MLP alone is fitted to the training images' 8 x 8 block means (L_sketch, decoder.py) on the cached
   z_i, 3000 Adam steps of 512, a tenth of them with the null embedding;
3. the whole decoder trains on with the `full` preset's loop for STEPS more steps at a lower learning rate
   (warm-up 50, cosine to 0, EMA 0.998).

Usage (from the checkout; RUN needs the shipped run's CLIP, oracle and priors and the embeddings of its training
images, e.g. from `minidalle2 train clip --preset full`):

    python docs/scripts/finetune_sketch.py FROM RUN STEPS LR

FROM is a run whose decoder has no sketch yet. What was shipped started from data/pretrained as it was at commit
e6b9b0c, before this decoder replaced it:

    git archive e6b9b0c data/pretrained | tar -x -C /tmp/before
    python docs/scripts/finetune_sketch.py /tmp/before/data/pretrained runs/sk/ft3k 3000 3e-4

Resumable: the same command continues from RUN's last checkpoint.
"""
import dataclasses
import sys
import time
from pathlib import Path

import torch

from minidalle2 import runs, training
from minidalle2.checkpoint import read_tensors
from minidalle2.decoder import to_model_space
from minidalle2.embeddings import load_embeddings, run_images

source, run, steps, lr = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(2)
preset = runs.get_preset("decoder", "full")
unet = dataclasses.replace(preset.model.unet, z_i_sketch=8)
preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, unet=unet),
                             train=dataclasses.replace(preset.train, steps=steps, lr=lr, warmup_steps=50,
                                                       ema_decay=0.998, ckpt_every=250, sample_every=0))
resume = (run / "decoder" / "train_state.json").exists()
folder = runs.prepare_stage_dir(run, "decoder", resume)
job = runs.setup_decoder(run, preset, print, resume)
if not resume:
    missing, unexpected = job.model.load_state_dict(read_tensors(source / "decoder" / "model.safetensors"),
                                                    strict=False)
    assert not unexpected and all(k.startswith("unet.sketch") for k in missing), (missing, unexpected)
    if not missing:
        print(f"note: {source}/decoder already reads a sketch; its sketch is fitted again and the decoder trained on")
    t0 = time.time()
    z_i, images = load_embeddings(run, "train")["z_i"], run_images(run, "train")
    opt = torch.optim.Adam(job.model.unet.sketch.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for i in range(3000):
        idx = torch.randint(0, len(images), (512,), generator=g)
        z = job.model.with_null(z_i[idx], torch.rand(512, generator=g) < 0.1)
        loss = job.model.sketch_loss(to_model_space(images[idx]), z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"sketch fitted: L_sketch {loss.item():.4f} after 3000 steps, {time.time() - t0:.0f} s")
init_from = (f"{source}/decoder, with a sketch of z_i (z_i_sketch 8) fitted alone for 3000 steps first "
             "(docs/scripts/finetune_sketch.py)")
info = training.train(folder, job.model, preset, job.step_loss, job.write, resume=resume,
                      extra_info={**job.record, "init_from": init_from}, progress=False)
print(f"decoder fine-tuned: {info['step']} steps in {info['wall_s']:.0f} s")
