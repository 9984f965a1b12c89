"""The prompt suite's two-object prompts (4 renders each) decoded from their true z_i by RUN's decoder, read by RUN's
oracle: the share fully right, with the relation right, bound right, with the right count. SKETCH (a file written
by sketch_fit.py, or -) replaces the decoder's sketch, the U-Net unchanged. Usage, from the repository root:
python docs/scripts/two_objects_true_z_i.py RUN [SKETCH|-] [SEED] (docs/two_objects.json, sketch_fit)"""
import sys, json, time
import torch
from safetensors.torch import load_file
from minidalle2 import runs
from minidalle2.pipeline import UnCLIP
from minidalle2.evaluation.geneval import prompt_suite, render_prompts, check
from minidalle2.unet import z_i_mlp
torch.set_num_threads(2)
run = sys.argv[1]; sk = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
oracle = runs.load("oracle", run)
model = UnCLIP.from_run_dir(run)
if sk:
    sd = load_file(sk)  # the widths of its layers: the sketch's hidden widths, then 3 k^2
    weights = sorted((k for k in sd if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))
    widths = [sd[k].shape[0] for k in weights]
    net = z_i_mlp(sd["0.weight"].shape[1], widths[-1], widths[:-1])
    net.load_state_dict(sd)
    model.decoder.unet.sketch = net
prompts = [p for p in prompt_suite() if p.kind == "two_object"]
n = 4
renders = render_prompts(prompts, [n] * len(prompts), model.image_size, seed=seed)
z_i = model.embed_images(renders)
_, tok, mask = model.embed_text([p.text for p in prompts])
t = time.time()
imgs = model.decode(z_i, seed=seed, text_tokens=tok.repeat_interleave(n, 0), text_mask=mask.repeat_interleave(n, 0))
seen, conf = oracle.read_with_confidence(imgs)
checks = [check(prompts[i // n], s, c) for i, (s, c) in enumerate(zip(seen, conf))]
mean = lambda key: round(sum(c[key] for c in checks if key in c) / sum(key in c for c in checks), 3)
print(json.dumps({"run": run, "sketch": sk, "seed": seed, "all": mean("all"), "relation": mean("relation"),
                  "binding": mean("binding"), "count": mean("count"), "s": round(time.time() - t, 1)}), flush=True)
