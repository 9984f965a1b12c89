"""Issue 25 (docs/variations.json, detail_invariance): which of render.py's details the quick decoder cannot draw.
Runs a command with only some details drawn at random; the others keep their plain value (fill solid, turn upright),
drawn from the same random stream, so scenes and captions are unchanged.

    python docs/scripts/details_subset.py KEEP SCRIPT_OR_CLI ARGS...

KEEP: the details drawn, comma-separated (background, fill, turn). SCRIPT_OR_CLI: a script path (run as __main__,
e.g. docs/scripts/details_invariance_run.py NAME 1 all) or `minidalle2` (the CLI: evaluate variations ...)."""
import runpy
import sys

import minidalle2.data
import minidalle2.render as render
from minidalle2.evaluation import variations

KEEP = set(sys.argv[1].split(","))
assert KEEP <= set(render.DETAILS), f"unknown detail in {KEEP}"
drawn = render.sample_details


def sample_details(rng, shapes):
    """render.sample_details, the details not kept set to their plain values."""
    d = drawn(rng, shapes)
    return render.Details(d.background if "background" in KEEP else "black",
                          d.fill if "fill" in KEEP else ("solid",) * len(shapes),
                          d.turn if "turn" in KEEP else tuple("upright" if t else "" for t in d.turn))


render.sample_details = minidalle2.data.sample_details = sample_details
probe = variations.details_probe


def details_probe(run_dir, *args, **kwargs):
    """variations.details_probe, which cannot fit a probe of a detail drawn with one value only: None then."""
    try:
        return probe(run_dir, *args, **kwargs)
    except ValueError as e:
        print(f"details probe skipped: {e}", flush=True)
        return None


variations.details_probe = details_probe
what, sys.argv = sys.argv[2], sys.argv[2:]
if what == "minidalle2":
    from minidalle2.tools.cli import main
    sys.exit(main(sys.argv[1:]))
runpy.run_path(what, run_name="__main__")
