"""Could choosing among several prior samples put two objects where the caption says? An upper bound
(docs/two_objects.json, prior_side.rerank_upper_bound).

For each test caption that states both objects and a relation, draw K samples of each prior (seeds 0..K-1) and
read each with the binding probe of `evaluation.layout.prior_layout`. A judge that compared each reading with what
the caption states would keep a right sample whenever the probe reads one of the K as right: the
share of captions with at least one sample bound (both objects with their own colour and shape) and at least one
bound with the relation right. The probe reads z_i, not pictures: prior_rerank_pipeline.py decodes the chosen ones.

    python docs/scripts/prior_rerank_bound.py RUN OUT.json

RUN: a copy of the shipped run with the train split's embeddings cached (the probe trains on them), as for
prior_layout_ablation.py. About a minute per sampling setting on 2 CPU cores.
"""
import json
import sys
from pathlib import Path

from minidalle2.embeddings import load_embeddings
from minidalle2.evaluation.layout import relation_captions, relation_readings
from minidalle2.evaluation.stages import BINDING_VALUES, binding_labels, probe_predictions, sample_prior, trained_priors

K = 8
# per prior, named sampling settings: each prior's shipped default first, then more varied samples
SETTINGS = {"diffusion": {"guidance 2, eta 0": {"guidance": 2.0, "eta": 0.0}, "guidance 1, eta 0": {"guidance": 1.0, "eta": 0.0},
                          "guidance 1, eta 1": {"guidance": 1.0, "eta": 1.0}},
            "ar": {"top_k 2": {}, "every bucket (top_k 16)": {"top_k": 16}}}


def best_of(reads, stated) -> dict:
    """For k = 1, 2, 4, 8: the share of captions where some of the first k samples is bound, and bound with the
    relation right."""
    def hits(read):
        return [relation_readings(read[j:j + 1], [stated["subject"][j]], [stated["other"][j]],
                                  [stated["relations"][j]]) for j in range(len(read))]
    per_sample = [hits(r) for r in reads]
    n = len(stated["idx"])
    return {k: {key: round(sum(any(per_sample[s][j][key] > 0 for s in range(k)) for j in range(n)) / n, 4)
                for key in ("binding", "relation")} for k in (1, 2, 4, 8)}


def main(run: Path, out: Path) -> None:
    train, test = load_embeddings(run, "train"), load_embeddings(run, "test")
    two_train, y_train = binding_labels(train)
    stated = relation_captions(test)
    captions = {k: test[k][stated["idx"]] for k in ("z_t", "text_tokens", "text_mask")}
    priors = trained_priors(run)
    result = {"n": len(stated["idx"]), "k": K}
    for name, settings in SETTINGS.items():
        for label, kw in settings.items():
            samples = [sample_prior(priors[name], captions, seed=s, **kw) for s in range(K)]
            reads = probe_predictions(train["z_i"][two_train], y_train, samples, BINDING_VALUES, seed=0)
            key = label if name == "diffusion" else f"AR prior, {label}"
            result[key] = best_of(reads, stated)
            print(f"{key}:", result[key])
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
