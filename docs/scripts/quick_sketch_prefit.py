"""The quick decoder with a sketch of z_i (8x8, two hidden layers of 512) fitted alone before its first step
(presets.Start without a base), trained into RUN, a quick run with CLIP and its embeddings. Usage, from the repository
root: python docs/scripts/quick_sketch_prefit.py RUN (docs/two_objects.json, sketch_fit.quick_prefit)"""
import dataclasses, sys
import torch
from minidalle2 import runs
from minidalle2.presets import Start
torch.set_num_threads(2)
p = runs.get_preset("decoder", "quick")
unet = dataclasses.replace(p.model.unet, z_i_sketch=8, z_i_sketch_hidden=[512, 512])
p = dataclasses.replace(p, model=dataclasses.replace(p.model, unet=unet), start=Start())
info = runs.train("decoder", sys.argv[1], p, progress=False)
print("decoder", info["step"], "steps", round(info["wall_s"], 1), "s", round(info["wall_s"] / info["step"], 4), "s/step")
