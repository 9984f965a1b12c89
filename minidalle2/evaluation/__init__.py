"""Evaluation: how good each stage and the whole pipeline are.

    stages.py   each stage on the test split: CLIP zero-shot and retrieval, the priors against z_t, the decoder
    oracle.py   the attribute oracle, a small CNN independent of CLIP that reads what a shapes image shows
    geneval.py  the pipeline on a fixed prompt suite, scored clause by clause by the oracle
    metrics.py  distribution metrics on CLIP embeddings (FD, CMMD, CLIP score, diversity)
"""
