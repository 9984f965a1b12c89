"""How much of two objects' layout survives in z_i's top k principal directions, and under isotropic noise
(docs/two_objects.json, prior_whitening.pca_truncation). RUN as for prior_layout_ablation.py."""
import torch
from minidalle2.embeddings import load_embeddings
from minidalle2.evaluation.stages import binding_labels, probe_predictions, BINDING_VALUES
from minidalle2.evaluation.layout import relation_captions, relation_readings
RUN="runs/p24"
train, test = load_embeddings(RUN, "train"), load_embeddings(RUN, "test")
two_train, y_train = binding_labels(train)
stated = relation_captions(test)
idx, sub, oth, rels = stated["idx"], stated["subject"], stated["other"], stated["relations"]
Z = train["z_i"]; mu = Z.mean(0); U, S, V = torch.linalg.svd(Z - mu, full_matrices=False)
z = test["z_i"][idx]
xs, names = [z], ["true"]
for k in (32, 64, 96, 112, 120):
    P = V[:k].T @ V[:k]
    xs.append(torch.nn.functional.normalize((z - mu) @ P + mu, dim=-1)); names.append(f"pca{k}")
g = torch.Generator().manual_seed(0)
for s in (0.05, 0.1, 0.15):
    xs.append(torch.nn.functional.normalize(z + s * torch.randn(z.shape, generator=g) / 128**0.5, dim=-1)); names.append(f"noise{s}")
reads = probe_predictions(train["z_i"][two_train], y_train, xs, BINDING_VALUES, seed=0)
var = (S**2 / (S**2).sum()).cumsum(0)
print("var kept", {k: round(var[k-1].item(), 4) for k in (32, 64, 96, 112, 120)})
out = {"n": len(idx), "variance_kept": {k: round(var[k-1].item(), 4) for k in (32, 64, 96, 112, 120)}, "readings": {}}
for n, x, r in zip(names, xs, reads):
    out["readings"][n] = {"cos": round((x * z).sum(-1).mean().item(), 4), **relation_readings(r, sub, oth, rels)}
    print(n, out["readings"][n])
import json; json.dump(out, open(f"{RUN}/pca_check.json", "w"), indent=1)
