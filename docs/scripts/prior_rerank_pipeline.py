"""Choose among a prior's samples with a reader of z_i's layout, and score the chosen pictures with the oracle
(docs/two_objects.json, prior_side.rerank_pipeline).

For each two-object prompt of the suite (version 2: 20 two-object prompts and 5 with a held-out pair, all stating
colours, shapes, sizes and a relation), draw K z_i from a prior and read each with the binding probe of
`evaluation.layout.prior_layout` (an MLP trained on the train split's true z_i). Each sample scores what the caption
states and the reading agrees with: the relation (4, when both objects are read with their colour and shape), both
objects' colours and shapes (2), their sizes (1). The N best samples per prompt are decoded, as are the first N
drawn (what the pipeline does today), with the same decoder noise, and the oracle reads every picture
(`geneval.check`: fully right, relation right). A verifier of the caption's statements on z_i, in the spirit of
the paper's best-of-k by z_i . z_t, which cannot see the order of the words.

    python docs/scripts/prior_rerank_pipeline.py RUN OUT.json

RUN: a copy of the shipped run with the train split's embeddings cached (the probe trains on them), e.g. runs/p24
as for prior_layout_ablation.py. About 5 minutes on 2 CPU cores.
"""
import json
import sys
from pathlib import Path

import torch

from minidalle2 import runs
from minidalle2.data import POSITIONS, SHAPES, SIZES
from minidalle2.embeddings import load_embeddings
from minidalle2.evaluation.geneval import check, prompt_suite
from minidalle2.evaluation.layout import COLOR_NAMES
from minidalle2.evaluation.oracle import relation_between
from minidalle2.evaluation.stages import BINDING_VALUES, binding_labels, probe_predictions
from minidalle2.pipeline import UnCLIP

K, N, SEEDS = 32, 2, (0, 1, 2)


def agreement(read: list[int], prompt) -> int:
    """How much of a two-object prompt the probe's reading of one z_i agrees with: 4 for the relation (with both
    objects' colours and shapes right), 2 for both colours and shapes, 1 for both sizes."""
    a = (COLOR_NAMES[read[0]], SHAPES[read[1]], SIZES[read[2]], POSITIONS[read[3]])
    b = (COLOR_NAMES[read[4]], SHAPES[read[5]], SIZES[read[6]], POSITIONS[read[7]])
    subject, other = ((o.color, o.shape, o.size) for o in prompt.scene.objects)
    for x, y in ((a, b), (b, a)):  # the probe names the objects by place; either may be the subject
        if x[:2] == subject[:2] and y[:2] == other[:2]:
            sizes = (x[2], y[2]) == (subject[2], other[2])
            return 2 + sizes + 4 * (relation_between(x[3], y[3]) == prompt.scene.relation)
    return 0


def main(run: Path, out: Path) -> None:
    model, oracle = UnCLIP.from_run_dir(run), runs.load("oracle", run)
    train = load_embeddings(run, "train")
    two_train, y_train = binding_labels(train)
    prompts = [p for p in prompt_suite() if len(p.scene.objects) == 2 and not p.stated]
    texts = [p.text for p in prompts]
    _, tokens, mask = model.embed_text(texts)
    tokens, mask = tokens.repeat_interleave(N, dim=0), mask.repeat_interleave(N, dim=0)
    result = {"n_prompts": len(prompts), "k": K, "n_per_prompt": N, "seeds": list(SEEDS)}
    for prior in ("ar", "diffusion"):
        per_seed = []
        for seed in SEEDS:
            z = model.sample_z_i(texts, prior=prior, n=K, seed=seed)[0].view(len(prompts), K, -1)  # (P, K, D)
            read = probe_predictions(train["z_i"][two_train], y_train, [z.reshape(-1, z.shape[-1])], BINDING_VALUES,
                                     seed=0)[0].view(len(prompts), K, -1)
            scores = torch.tensor([[agreement(read[p, k].tolist(), prompts[p]) for k in range(K)]
                                   for p in range(len(prompts))])  # (P, K)
            best = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :N]  # (P, N)
            chosen = {"first": z[:, :N], "reranked": torch.gather(z, 1, best[..., None].expand(-1, -1, z.shape[-1]))}
            row = {"probe_agrees_first": (scores[:, :N] >= 6).float().mean().item(),
                   "probe_agrees_reranked": (torch.gather(scores, 1, best) >= 6).float().mean().item()}
            for name, z_sel in chosen.items():
                images = model.decode(z_sel.reshape(-1, z.shape[-1]), seed=seed, text_tokens=tokens, text_mask=mask)
                seen, confidence = oracle.read_with_confidence(images)
                checks = [check(prompts[i // N], s, c) for i, (s, c) in enumerate(zip(seen, confidence))]
                row[f"{name}_all"] = sum(c["all"] for c in checks) / len(checks)
                row[f"{name}_relation"] = sum(c.get("relation", False) for c in checks) / len(checks)
            per_seed.append({k: round(v, 4) for k, v in row.items()})
            print(prior, seed, per_seed[-1], flush=True)
        keys = per_seed[0]
        result[prior] = {k: [round(sum(r[k] for r in per_seed) / len(per_seed), 4),
                             round(float(torch.tensor([r[k] for r in per_seed]).std()), 4)] for k in keys}
        result[prior]["per_seed"] = per_seed
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k in ("ar", "diffusion")}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
