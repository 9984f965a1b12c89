"""Can a larger sketch network read which object sits where from z_i? Fits a sketch s(z_i) alone (L_sketch, Adam,
cosine decay, batches of 512, the null z_i 10 % of the time) on RUN's train split, with DEPTH linear layers of HIDDEN
units (DEPTH 2: one hidden layer), and scores it against the sketch of DECODER_RUN's decoder: the share of the prompt
suite's two-object scenes (8 renders each) whose sketch is nearer to the scene's 8x8 block means than to its mirror
image's. RUN must hold DECODER_RUN's CLIP with its train split cached. Usage, from the repository root:
python docs/scripts/sketch_fit.py RUN DECODER_RUN HIDDEN DEPTH STEPS LR [OUT.safetensors] (docs/two_objects.json, sketch_fit)"""
import sys, json, time
import numpy as np, torch, torch.nn.functional as F
from safetensors.torch import save_file
from minidalle2.pipeline import UnCLIP
from minidalle2.embeddings import load_embeddings, run_images
from minidalle2.data import render, mirrored_scene
from minidalle2.evaluation.geneval import prompt_suite, _complete
from minidalle2.evaluation.layout import nearer_than_mirror
from minidalle2.unet import z_i_mlp
torch.set_num_threads(2); torch.manual_seed(0)
run, decoder_run = sys.argv[1], sys.argv[2]
hidden, depth, steps, lr = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
model = UnCLIP.from_run_dir(decoder_run)
emb = load_embeddings(run, "train"); imgs = run_images(run, "train")
k = 8
target = F.adaptive_avg_pool2d(imgs.float() / 255 * 2 - 1, k).flatten(1)  # (N, 192)
z = emb["z_i"]; D = z.shape[1]
net = z_i_mlp(D, 3 * k * k, [hidden] * (depth - 1))
null = model.decoder.null_z_i.detach()
opt = torch.optim.Adam(net.parameters(), lr=lr)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
g = torch.Generator().manual_seed(0)
# test scenes: the suite's two-object prompts, 8 renders each
prompts = [p for p in prompt_suite() if p.kind == "two_object"]
rng = np.random.default_rng([7, 0]); n = 8
scenes = [_complete(p, rng) for p in prompts for _ in range(n)]
to_t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255
x = to_t([render(s, 32) for s in scenes]); xm = to_t([render(mirrored_scene(s), 32) for s in scenes])
zt = model.embed_images(x)
P, Pm = F.adaptive_avg_pool2d(x * 2 - 1, k).flatten(1), F.adaptive_avg_pool2d(xm * 2 - 1, k).flatten(1)
def score(fn):
    with torch.no_grad():
        return nearer_than_mirror(fn(zt), P, Pm)
out = {"hidden": hidden, "depth": depth, "steps": steps, "lr": lr,
       "decoder_sketch": score(lambda q: model.decoder.unet.sketch_of(q).flatten(1))}
t = time.time()
for step in range(steps):
    idx = torch.randint(0, len(z), (512,), generator=g)
    zz = z[idx]; drop = torch.rand(512, generator=g) < 0.1
    zz = torch.where(drop[:, None], null.expand_as(zz), zz)
    loss = (net(zz) - target[idx]).square().mean()
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    if (step + 1) % (steps // 4) == 0:
        print(step + 1, round(loss.item(), 5), score(net), flush=True)
out.update(loss=round(loss.item(), 5), new_sketch=score(net), s=round(time.time() - t, 1))
print(json.dumps(out), flush=True)
if len(sys.argv) > 7:
    save_file(net.state_dict(), sys.argv[7])
