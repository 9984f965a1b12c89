"""Where the diffusion prior loses two objects' layout (docs/two_objects.json, key prior_whitening; issue 24).

Trains diffusion priors with the full preset's loop on the shipped CLIP's train-split embeddings and reads where
their samples put two objects (the binding probe of evaluation.layout.prior_layout), and what the prediction x_0
keeps when the true z_i is noised to step t. Variants: base (the shipped prior), oracle (one more token: the true
quadrants of the relation's subject and of the other object), ids (the prior's own embedding of the caption's
token ids added to CLIP's token features); each optionally whitened in the top K principal directions of z_i.

    python docs/scripts/prior_layout_ablation.py base,oracle STEPS WIDTH LAYERS K     (K = 0: no whitening)

RUN must be a copy of data/pretrained whose embedding cache holds the train split
(``minidalle2.embeddings.cache_embeddings(RUN)``); results are appended to RUN/results.json.
"""
import json, sys, time, math
import torch, torch.nn as nn
from minidalle2.embeddings import load_embeddings, load_clip, tokenize
from minidalle2.prior_diffusion import DiffusionPrior
from minidalle2.presets import PRIOR_DIFFUSION
from minidalle2.transformer import CausalTransformer
from minidalle2.training import step_generator
from minidalle2.runs import batch
from minidalle2.evaluation.stages import binding_labels, probe_predictions, BINDING_VALUES
from minidalle2.evaluation.layout import relation_captions, relation_readings
torch.set_num_threads(2)
RUN = "runs/p24"
OUT = f"{RUN}/results.json"
import dataclasses
variants = sys.argv[1].split(",")
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
width = int(sys.argv[3]) if len(sys.argv) > 3 else 96
layers = int(sys.argv[4]) if len(sys.argv) > 4 else 3
preset = PRIOR_DIFFUSION["full"]
preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, width=width, layers=layers, heads=width // 32))
white = int(sys.argv[5]) if len(sys.argv) > 5 else 0
tag = f"_{steps}_w{width}_l{layers}_white{white}"
train, test = load_embeddings(RUN, "train"), load_embeddings(RUN, "test")
clip = load_clip(RUN)
for d in (train, test):
    d["ids"] = tokenize(clip, d["captions"])
    d["layout"] = (d["position0"] + 1) * 5 + (d["position1"] + 1)  # 0..24
meta = train["meta"]
D = meta["embed_dim"]
if white:
    Z = train["z_i"]; MU = Z.mean(0); _, S_, V_ = torch.linalg.svd(Z - MU, full_matrices=False)
    SIG = S_[:white] / (len(Z) - 1) ** 0.5; VK = V_[:white]
    def to_x0(z):  # (B, D) -> whitened coordinates padded with zeros
        w = (z - MU) @ VK.T / SIG
        return torch.cat([w, torch.zeros(len(z), D - white)], 1)
    def from_x0(x):
        return torch.nn.functional.normalize(MU + (x[:, :white] * SIG) @ VK, dim=-1)
else:
    to_x0 = lambda z: z * D ** 0.5
    from_x0 = lambda x: torch.nn.functional.normalize(x, dim=-1)
from minidalle2.diffusion import classifier_free_guidance
def loss_fn(prior, z_i, tok, msk, zt, g):
    drop = torch.rand(len(z_i), generator=g) < prior.cfg.cond_drop
    t = prior.diffusion.sample_timesteps(len(z_i), generator=g)
    noise = torch.randn(z_i.shape, generator=g)
    return prior.diffusion.training_loss(lambda x, t: prior(x, t, tok, msk, zt, drop), to_x0(z_i), t=t, noise=noise)["loss"]
def sample_fn(prior, tok, msk, zt, s, g):
    null = torch.ones(len(zt), dtype=torch.bool)
    def mf(x, t):
        c = prior(x, t, tok, msk, zt)
        return c if s == 1 else classifier_free_guidance(c, prior(x, t, tok, msk, zt, drop=null), s)
    return from_x0(prior.diffusion.ddim_sample_loop(mf, (len(zt), D), steps=64, generator=g))

class Variant(DiffusionPrior):
    def __init__(self, kind, *a, **k):
        super().__init__(*a, **k)
        self.kind = kind
        C = self.cfg.width
        if kind == "oracle":
            self.extra = nn.Embedding(25, C)
            self.null_extra = nn.Parameter(torch.zeros(C))
            self.transformer = CausalTransformer(C, self.cfg.layers, self.cfg.heads, max_len=self.context_length + 5)
        if kind == "ids":
            self.id_emb = nn.Embedding(49408, C)
            nn.init.normal_(self.id_emb.weight, std=0.02)
        self.side = None

    def sequence(self, x_t, t, text_tokens, text_mask, z_t, drop=None):
        seq, km = super().sequence(x_t, t, text_tokens, text_mask, z_t, drop)
        side = self.side
        if self.kind == "oracle":
            e = self.extra(side)
            if drop is not None:
                e = torch.where(drop[:, None], self.null_extra, e)
            seq = torch.cat([seq[:, :-3], e[:, None], seq[:, -3:]], 1)
            km = torch.cat([km[:, :-3], torch.ones_like(km[:, :1]), km[:, -3:]], 1)
        if self.kind == "ids":
            L = int(text_mask.sum(1).max())
            e = self.id_emb(side[:, :L])
            if drop is not None:
                e = e * (~drop)[:, None, None]
            seq = torch.cat([seq[:, :L] + e, seq[:, L:]], 1)
        return seq, km

def side_of(kind, d, idx):
    return d["layout"][idx] if kind == "oracle" else d["ids"][idx] if kind == "ids" else None

two_train, y_train = binding_labels(train)
stated = relation_captions(test)
idx_t, subject, other, rels = stated["idx"], stated["subject"], stated["other"], stated["relations"]
try:
    results = json.load(open(OUT))
except FileNotFoundError:
    results = {}
for kind in variants:
    torch.manual_seed(0)
    prior = Variant(kind, preset.model, meta["embed_dim"], meta["text_width"], meta["context_length"], preset.sample)
    opt = torch.optim.AdamW(prior.parameters(), lr=1e-3, weight_decay=0.01)
    ema = {k: v.detach().clone() for k, v in prior.state_dict().items()}
    t0 = time.time()
    for step in range(steps):
        lr = 1e-3 * min(1, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for gp in opt.param_groups: gp["lr"] = lr
        g = step_generator(0, step)
        idx = batch(len(train["z_i"]), 128, g)
        prior.side = side_of(kind, train, idx)
        loss = loss_fn(prior, train["z_i"][idx], train["text_tokens"][idx], train["text_mask"][idx], train["z_t"][idx], g)
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            for k, v in prior.state_dict().items():
                if v.dtype.is_floating_point: ema[k].mul_(0.995).add_(v, alpha=0.005)
        if step % 500 == 0: print(kind, step, round(loss.item(), 4), round(time.time() - t0), flush=True)
    train_s = time.time() - t0
    prior.load_state_dict(ema); prior.eval()
    res = {"train_s": round(train_s, 1), "steps": steps}
    for s in (1.0, 2.0):
        g = torch.Generator().manual_seed(0)
        prior.side = side_of(kind, test, idx_t)
        z = sample_fn(prior, test["text_tokens"][idx_t], test["text_mask"][idx_t], test["z_t"][idx_t], s, g)
        cos = (z * test["z_i"][idx_t]).sum(-1).mean().item()
        read = probe_predictions(train["z_i"][two_train], y_train, [z], BINDING_VALUES, seed=0)[0]
        res[f"g{s:g}"] = {"cos_two": round(cos, 4), **relation_readings(read, subject, other, rels)}
        # all test captions cos
        prior.side = side_of(kind, test, torch.arange(len(test["z_t"])))
        zall = sample_fn(prior, test["text_tokens"], test["text_mask"], test["z_t"], s, g)
        res[f"g{s:g}"]["cos_all"] = round((zall * test["z_i"]).sum(-1).mean().item(), 4)
    # x0 prediction from noised true z_i, read by the probe, by t
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in prior.state_dict().items()}, f"{RUN}/{kind}{tag}.safetensors")
    prior.side = side_of(kind, test, idx_t)
    x0 = to_x0(test["z_i"][idx_t])
    byt = {}
    with torch.no_grad():
        for tt in (20, 100, 300, 500, 700, 900, 990):
            g = torch.Generator().manual_seed(1)
            t_ = torch.full((len(x0),), tt)
            xt = prior.diffusion.q_sample(x0, t_, noise=torch.randn(x0.shape, generator=g))
            zh = from_x0(prior(xt, t_, test["text_tokens"][idx_t], test["text_mask"][idx_t], test["z_t"][idx_t]))
            read = probe_predictions(train["z_i"][two_train], y_train, [zh], BINDING_VALUES, seed=0)[0]
            byt[tt] = {"cos": round((zh * test["z_i"][idx_t]).sum(-1).mean().item(), 4), **relation_readings(read, subject, other, rels)}
    res["x0_by_t"] = byt
    results[f"{kind}{tag}"] = res
    json.dump(results, open(OUT, "w"), indent=1)
    print(kind, json.dumps(res), flush=True)
