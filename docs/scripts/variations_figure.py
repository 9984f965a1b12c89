"""The README's variations picture from a details run: a test image and 7 eta-1 variations, the oracle's reading
under each. Usage: python docs/scripts/variations_figure.py RUN docs/gallery_variations.png (RUN: runs/v25/inv1)"""
import sys, torch
import matplotlib
matplotlib.use("Agg")
from minidalle2 import runs
from minidalle2.embeddings import run_datasets
from minidalle2.evaluation.variations import read_out
from minidalle2.pipeline import UnCLIP
from minidalle2.tools import figures
torch.set_num_threads(2)
run, out = sys.argv[1], sys.argv[2]
test = run_datasets(run)["test"]
i = int(sys.argv[3]) if len(sys.argv) > 3 else next(k for k in range(len(test)) if test.scene(k).objects and len(test.scene(k).objects) == 1)
model, oracle = UnCLIP.from_run_dir(run), runs.load("oracle", run)
image = test[i]["image"]
var = model.variations(image, n=7, eta=1.0, seed=0)
words_in = read_out(oracle, image[None])[0]
words = read_out(oracle, var, reference=oracle.read(image[None])[0])
fig = figures.image_grid(torch.cat([image[None], var]), [f"input: {words_in}"] + [f"eta 1: {w}" for w in words], wrap=24)
fig.savefig(out, dpi=100, bbox_inches="tight")
print(i, test.caption(i), words_in, words)
