"""Tools around the stages: the command line and what it runs.

    cli.py        the ``minidalle2`` command
    run.py        a run dir: train a stage by name, train them all, the run a notebook uses
    demo.py       ``minidalle2 demo``: every stage trained, pictures and metrics
    bench.py      ``minidalle2 bench``: training and sampling speed of each stage
    export.py     ``minidalle2 export``: a trained run made small for shipping (how data/pretrained is made)
    figures.py    the plots the notebooks and the demo draw
    classroom.py  the paper's equations as exercises: release a student copy, grade it
"""
