"""A quick run with the details no caption states, its CLIP trained with detail invariance lambda: CLIP, the details
probe, then (with `all`) the quick decoder and the quick details oracle of tests/fixtures. Usage, from the repository
root: python docs/scripts/details_invariance_run.py NAME LAMBDA [clip|all] [DECODER_STEPS]; the run goes to
runs/v25/NAME, and `minidalle2 evaluate variations --run-dir runs/v25/NAME --seed S` scores it (docs/variations.json).
DECODER_STEPS trains the quick decoder for that many steps instead of its 2600 (the cosine schedule stretched to
match)."""
import dataclasses, json, shutil, sys, time
from pathlib import Path
import torch
from minidalle2 import runs
from minidalle2.evaluation.variations import details_probe

name, lam, what = sys.argv[1], float(sys.argv[2]), sys.argv[3]
steps = int(sys.argv[4]) if len(sys.argv) > 4 else None
run = Path("runs/v25") / name
torch.set_num_threads(2)
out = {"lam": lam}
if not (run / "clip" / "open_clip_model.safetensors").exists():
    p = runs.get_preset("clip", "quick")
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, detail_invariance=lam),
                            data=dataclasses.replace(p.data, details=True))
    t = time.time(); runs.train("clip", run, p, progress=False); out["clip_s"] = time.time() - t
t = time.time(); out["probe"] = details_probe(run); out["probe_s"] = time.time() - t
print(json.dumps(out), flush=True)
if what == "all":
    if not (run / "oracle").exists():
        shutil.copytree("tests/fixtures/details_run/oracle", run / "oracle")
    decoder = runs.get_preset("decoder", "quick")
    if steps:
        decoder = dataclasses.replace(decoder, train=dataclasses.replace(decoder.train, steps=steps,
                                                                         ckpt_every=steps // 8, sample_every=0))
        out["decoder_steps"] = steps
    t = time.time(); runs.train("decoder", run, decoder, progress=False); out["decoder_s"] = time.time() - t
json.dump(out, open(run / "result.json", "w"), indent=1)
print("done", flush=True)
