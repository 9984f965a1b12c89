"""The ``minidalle2`` command line: train, evaluate and demo each stage.

User mistakes (``UserError``) print one line and exit with status 2; an interrupted run exits with 130 and
keeps its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minidalle2.errors import UserError


def _json_out(path: str | None, result: dict) -> None:
    if path:
        out = Path(path)
        if not out.parent.exists():
            raise UserError(f"folder {out.parent} does not exist; create it or choose another --json path")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


def cmd_train(args) -> None:
    from minidalle2.run import train_stage

    if args.stage != "clip" and (args.data_dir or args.skip_bad):
        raise UserError("--data-dir and --skip-bad apply to `train clip` only; later stages read its embeddings")
    data = {"data_dir": args.data_dir, "skip_bad": args.skip_bad} if args.stage == "clip" else {}
    info = train_stage(args.stage, Path(args.run_dir), args.preset, resume=args.resume,
                       progress=not args.no_progress, **data)
    last = f"{info['history'][-1]:.4f}" if info["history"] else "n/a"
    print(f"{args.stage}: {info['step']} steps, final loss {last}, {info['wall_s']:.0f} s of training")


def cmd_evaluate(args) -> None:
    from minidalle2 import evaluate

    if args.stage == "clip":
        result = evaluate.evaluate_clip(Path(args.run_dir))
        print(evaluate.format_clip_report(result))
    elif args.stage == "priors":
        result = evaluate.evaluate_priors(Path(args.run_dir), n=args.n)
        print(evaluate.format_priors_report(result))
    else:
        from minidalle2.decoder import evaluate_decoder

        result = evaluate_decoder(Path(args.run_dir))
        print(json.dumps(result, indent=2))
    _json_out(args.json, result)


def cmd_bench(args) -> None:
    from minidalle2.bench import format_bench, run_bench

    result = run_bench(args.preset, args.stage or None)
    print(format_bench(result))
    _json_out(args.json, result)


def cmd_demo(args) -> None:
    from minidalle2.demo import run_demo

    run_demo(Path(args.out), preset=args.preset, fresh=args.fresh, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minidalle2", description="DALL-E 2 / unCLIP, stage by stage, on a laptop CPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one stage into a run dir")
    t.add_argument("stage", choices=["clip", "prior-diffusion", "prior-ar", "decoder"])
    t.add_argument("--preset", default="quick", help="quick (CPU, minutes), full (GPU) or tiny (tests)")
    t.add_argument("--run-dir", required=True, help="folder holding every stage of one run")
    t.add_argument("--resume", action="store_true", help="continue the stage's last checkpoint")
    t.add_argument("--data-dir", help="train CLIP on your own folder of images + captions.csv / captions.jsonl")
    t.add_argument("--skip-bad", action="store_true", help="skip bad rows of --data-dir (counted) instead of stopping")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate one stage on the test split")
    e.add_argument("stage", choices=["clip", "priors", "decoder"])
    e.add_argument("--run-dir", required=True)
    e.add_argument("-n", type=int, help="evaluate on the first n test captions only (priors)")
    e.add_argument("--json", help="also write the numbers to this JSON file")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="training samples/s and sampling time of each stage on this machine")
    b.add_argument("--preset", default="quick", help="model sizes to time (quick, full, tiny)")
    b.add_argument("--stage", action="append", help="only this stage (repeatable)")
    b.add_argument("--json", help="also write the numbers to this JSON file")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="train every stage with the quick preset and write figures")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--preset", default="quick")
    d.add_argument("--fresh", action="store_true", help="retrain even if --out already holds a finished run")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint is kept, continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
