"""The ``minidalle2`` command line: train, evaluate and demo each stage.

User mistakes (``UserError``) print one line and exit with status 2; an interrupted run exits with 130 and
keeps its last checkpoint.

Each command imports what it runs inside its function, the one place in the package that does: importing torch
and the stages takes seconds, and ``minidalle2 --help`` (or a mistyped command) should answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from minidalle2.errors import UserError


def _check_out(path: str, flag: str, suffix: str | None = None) -> Path:
    """Refuse an output path before any work is done: a missing folder, a folder, or the wrong file type."""
    out = Path(path)
    if suffix and out.suffix.lower() != suffix:
        raise UserError(f"{flag} {path} should name a {suffix} file")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist; create it (mkdir -p {out.parent}) or choose another "
                        f"{flag} path")
    if out.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file in it")
    return out


def _json_out(path: str | None, result: dict) -> None:
    from minidalle2.checkpoint import write_json

    if path:
        write_json(_check_out(path, "--json"), result)
        print(f"wrote {path}")


def cmd_train(args) -> None:
    """Train; a first run that fails or is interrupted before writing anything leaves no empty run dir behind."""
    run_dir = Path(args.run_dir)
    new = not run_dir.exists()
    try:
        _train(args)
    except BaseException:
        if new and run_dir.is_dir() and not any(p.is_file() for p in run_dir.rglob("*")):
            shutil.rmtree(run_dir)
        raise


def _train(args) -> None:
    import torch

    from minidalle2 import distributed
    from minidalle2.runs import train
    from minidalle2.tools.run import train_all

    if args.nproc is not None and args.nproc != 1:
        return _launch(args)
    if not distributed.init(args.threads) and args.threads:  # (under torchrun, init sets them)
        torch.set_num_threads(args.threads)
    say = print if distributed.is_main() else (lambda *a: None)
    if args.stage == "all":
        data = {"data_dir": args.data_dir, "skip_bad": args.skip_bad}
        for stage, info in train_all(Path(args.run_dir), args.preset, progress=not args.no_progress, log=say,
                                     **data).items():
            say(f"{stage}: {info['step']} steps, {info['wall_s']:.0f} s of training{_after_base(info)}")
        return
    info = train(args.stage, Path(args.run_dir), args.preset, resume=args.resume, progress=not args.no_progress,
                 data_dir=args.data_dir, skip_bad=args.skip_bad)
    last = f"{info['history'][-1]:.4f}" if info["history"] else "n/a"
    say(f"{args.stage}: {info['step']} steps, final loss {last}, {info['wall_s']:.0f} s of training{_after_base(info)}")


def _after_base(info: dict) -> str:
    """What a stage whose recipe starts from a base (presets.Start) trained before: its base's steps and time, and
    the seconds the part the base lacks was fitted alone."""
    base, fit = info.get("base"), info.get("fit_s")
    said = ([f"after its base: {base['step']} steps, {base['wall_s']:.0f} s"] if base else []) + \
        ([f"a part fitted alone first: {fit:.0f} s"] if fit is not None else [])
    return f" ({'; '.join(said)})" if said else ""


def _launch(args) -> None:
    """``train ... --nproc N``: check what can be checked here, then run the same command under torchrun
    (``python -m torch.distributed.run --standalone --nproc-per-node N -m minidalle2 train ...``)."""
    import torch

    import minidalle2
    from minidalle2 import distributed
    from minidalle2.checkpoint import prepare_stage_dir
    from minidalle2.runs import STAGES, get_preset

    n = args.nproc
    if distributed.launched():
        raise UserError("--nproc starts torchrun itself; under torchrun leave it out (--nproc-per-node sets it)")
    cuda = torch.cuda.is_available()
    limit, what = (torch.cuda.device_count(), "GPUs") if cuda else (os.cpu_count() or 1, "CPU cores")
    if not 1 <= n <= limit:
        raise UserError(f"--nproc {n}: choose from 1 to {limit}, the number of {what} of this machine")
    for stage in STAGES if args.stage == "all" else [args.stage]:
        batch = get_preset(stage, args.preset).train.batch_size
        if batch % n:
            raise UserError(f"--nproc {n} does not divide the {stage} batch of {batch} ({args.preset} preset); "
                            f"choose a number of processes that divides it")
    if args.stage != "all":
        prepare_stage_dir(Path(args.run_dir), args.stage, args.resume)
    argv, skip = [], False
    for a in args.argv:
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc"
            continue
        argv.append(a)
    package_root = str(Path(minidalle2.__file__).resolve().parents[1])  # the workers import this same package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(args.threads or distributed.default_threads(n))}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(n), "-m", "minidalle2", *argv], env=env)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:  # the workers got it too; let them stop and keep their last checkpoint
        proc.wait()
        raise
    if rc:
        raise UserError(f"training on {n} processes stopped (torchrun exit status {rc}); the lines above say why")


def _seeds(args) -> list[int]:
    """--seeds 0,1,2 (pipeline), else --seed."""
    if args.seeds is None:
        return [args.seed]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give whole numbers separated by commas, e.g. --seeds 0,1,2") from None
    for seed in seeds:
        _check_seed(seed)
    return seeds


def _check_seed(seed: int) -> None:
    from minidalle2.pipeline import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is out of range; choose a whole number from 0 to {MAX_SEED} (2**64 - 1)")


def _folder_data(run_dir: str) -> str | None:
    """The folder a run's CLIP was trained on (None: the shapes data, or no CLIP yet)."""
    from minidalle2.checkpoint import read_json

    state = Path(run_dir) / "clip" / "train_state.json"
    data = read_json(state).get("data") if state.exists() else None
    return data["folder"] if data else None


def _rows(args) -> tuple[str, ...]:
    """--rows diffusion,ar,none,true_z_i,caption (pipeline; evaluate_pipeline names the allowed rows); the default
    leaves out true_z_i and caption."""
    rows = tuple(r.strip() for r in ("diffusion,ar,none" if args.rows is None else args.rows).split(",") if r.strip())
    if not rows:
        raise UserError("--rows is empty: choose from diffusion,ar,none,true_z_i,caption (the real row is always "
                        "scored)")
    return rows


def cmd_evaluate(args) -> None:
    from minidalle2.evaluation import geneval, stages, variations
    from minidalle2.evaluation.variations import has_details

    if args.stage not in ("pipeline", "textdiff") and args.seeds is not None:
        raise UserError("--seeds applies to `evaluate pipeline` and `evaluate textdiff` only")
    if args.stage != "pipeline" and args.rows is not None:
        raise UserError("--rows applies to `evaluate pipeline` only")
    if args.stage != "pipeline" and args.prior_guidance is not None:
        raise UserError("--prior-guidance applies to `evaluate pipeline` only")
    if args.stage != "textdiff" and args.methods is not None:
        raise UserError("--methods applies to `evaluate textdiff` only")
    if args.stage in ("pipeline", "textdiff", "all", "upsampler") and _folder_data(args.run_dir):
        raise UserError(f"evaluate {args.stage} does not apply to this run: it scores a fixed suite of shapes prompts "
                        f"with an oracle that knows only the shapes data, and this run's CLIP learned from your "
                        f"folder {_folder_data(args.run_dir)}; use evaluate clip, priors and decoder")
    if args.stage in ("pipeline", "all"):
        n = 2 if args.n is None else args.n
        if args.stage == "all":
            geneval.evaluate_all(Path(args.run_dir), n=n, seed=args.seed, json_path=args.json,
                                 report_path=args.report, n_partial=args.n_partial)
            return
        result = geneval.evaluate_pipeline_seeds(Path(args.run_dir), n=n, seeds=_seeds(args), rows=_rows(args),
                                                 n_partial=args.n_partial, prior_guidance=args.prior_guidance)
        print(geneval.format_pipeline_report(result))
    elif args.stage == "textdiff":
        from minidalle2.evaluation import textdiff
        from minidalle2.pipeline import EDIT_METHODS

        methods = EDIT_METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",")
                                                                  if m.strip())
        seeds = (0, 1, 2) if args.seeds is None else _seeds(args)
        result = textdiff.evaluate_textdiff(Path(args.run_dir), methods=methods, seeds=seeds)
        print(textdiff.format_textdiff_report(result))
    elif args.stage == "clip":
        result = stages.evaluate_clip(Path(args.run_dir))
        print(stages.format_clip_report(result))
        if has_details(Path(args.run_dir)):
            result["details_probe"] = variations.details_probe(Path(args.run_dir))
            print(variations.format_probe(result["details_probe"]))
    elif args.stage == "variations":
        result = variations.evaluate_variations(Path(args.run_dir), n=8 if args.n is None else args.n, seed=args.seed)
        print(variations.format_variations_report(result))
    elif args.stage == "upsampler":
        from minidalle2.evaluation import upsampling

        result = upsampling.evaluate_upsampler(Path(args.run_dir), **({} if args.n is None else {"n": args.n}))
        print(upsampling.format_upsampler_report(result))
    elif args.stage == "priors":
        result = stages.evaluate_priors(Path(args.run_dir), n=args.n)
        print(stages.format_priors_report(result))
    else:
        result = stages.evaluate_decoder(Path(args.run_dir))
        print(json.dumps(result, indent=2))
    _json_out(args.json, result)


def _save_grid(images, captions: list[str], out: str, ncols: int) -> None:
    """Write images with their captions as one PNG, through a temporary file: never half a picture."""
    import matplotlib.pyplot as plt

    from minidalle2.tools.figures import image_grid

    path = _check_out(out, "--out", ".png")
    tmp = path.with_name(path.name + ".tmp")
    fig = image_grid(images, captions, ncols=ncols)
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    print(f"wrote {path}")


def _unclip(args):
    """The run's UnCLIP, once --out is known to be writable (so a bad path fails before minutes of sampling)."""
    from minidalle2.pipeline import UnCLIP

    _check_out(args.out, "--out", ".png")
    model = UnCLIP.from_run_dir(Path(args.run_dir))
    if args.upsample:
        model.check_upsampler()  # before minutes of sampling
    return model


def _upsampled(model, images, args):
    """--upsample: the cascade's 64x64 pictures (inputs included), else the base decoder's."""
    return model.upsample(images, seed=args.seed) if args.upsample else images


def cmd_generate(args) -> None:
    model = _unclip(args)
    images = model.generate(args.prompts, prior=args.prior, n=args.n, guidance=args.guidance, steps=args.steps,
                            seed=args.seed, prior_guidance=args.prior_guidance)
    captions = [f"{p} ({args.prior} prior)" for p in args.prompts for _ in range(args.n)]
    _save_grid(_upsampled(model, images, args), captions, args.out, ncols=min(args.n, 8))


def cmd_vary(args) -> None:
    import torch

    model = _unclip(args)
    image = model.load_images([args.image])
    images = torch.cat([image, model.variations(image[0], n=args.n, eta=args.eta, seed=args.seed)])
    captions = ["input"] + [f"variation {k + 1} (eta {args.eta})" for k in range(args.n)]
    _save_grid(_upsampled(model, images, args), captions, args.out, ncols=min(args.n + 1, 9))


def cmd_interpolate(args) -> None:
    import torch

    model = _unclip(args)
    a, b = model.load_images([args.image_a, args.image_b])
    images = torch.cat([a[None], model.interpolate(a, b, n=args.n, latent=args.latent, seed=args.seed), b[None]])
    thetas = [f"theta {k / (args.n - 1):.2f}" for k in range(args.n)] if args.n > 1 else []
    _save_grid(_upsampled(model, images, args), ["image A"] + thetas + ["image B"], args.out, ncols=args.n + 2)


def cmd_textdiff(args) -> None:
    import torch

    from minidalle2.pipeline import EDIT_METHOD, EDIT_THETA_MAX

    method = args.method or EDIT_METHOD
    model = _unclip(args)
    image = model.load_images([args.image])
    theta_max = EDIT_THETA_MAX.get(method, 0.5) if args.theta_max is None else args.theta_max
    images = torch.cat([image, model.text_diff(image[0], args.from_caption, args.to_caption, n=args.n,
                                               theta_max=theta_max, method=method)])
    thetas = [f"theta {theta_max * k / (args.n - 1):.2f}" for k in range(args.n)] if args.n > 1 else []
    _save_grid(_upsampled(model, images, args), [f"input: {args.from_caption} -> {args.to_caption} ({method})"]
               + thetas, args.out, ncols=args.n + 1)


def cmd_export(args) -> None:
    from minidalle2.tools.export import export_run

    export_run(Path(args.run_dir), Path(args.out), note=args.note)


def cmd_bench(args) -> None:
    from minidalle2.tools.bench import format_bench, run_bench

    result = run_bench(args.preset, args.stage or None, demo=args.demo, nproc=args.nproc, bf16=args.bf16)
    print(format_bench(result))
    _json_out(args.json, result)


def cmd_demo(args) -> None:
    from minidalle2.tools.demo import run_demo

    run_demo(Path(args.out), preset=args.preset, fresh=args.fresh, pretrained=args.pretrained,
             progress=not args.no_progress)


def grading_timeout() -> float:
    from minidalle2.tools.grading import TIMEOUT_S

    return TIMEOUT_S


def cmd_classroom(args) -> None:
    from minidalle2.tools import classroom, grading

    if args.action == "list":
        print(classroom.format_list())
    elif args.action == "release":
        print(classroom.format_release(classroom.release(Path(args.out_dir))))
    else:
        if args.csv:
            _check_out(args.csv, "--csv", ".csv")
        print("grading runs each student's code with your permissions: it is not a sandbox (see INSTRUCTORS.md)",
              file=sys.stderr)
        copies = grading.find_copies([Path(d) for d in args.student_dirs])
        one = len(copies) == 1
        reports = grading.grade_many(copies, timeout=args.timeout, exercises=args.exercise,
                                     progress=lambda r: print(grading.format_grade(r) if one
                                                              else grading.format_summary(r), flush=True))
        _json_out(args.json, reports)
        if args.csv:
            grading.write_csv(Path(args.csv), reports)
            print(f"wrote {args.csv}")
        failed = [r for r in reports if r.get("error")]
        if failed:
            raise UserError(f"{len(failed)} of {len(reports)} copies could not be graded: "
                            + "; ".join(f"{r['student']}: {r['error'].splitlines()[0]}" for r in failed))


def _interrupted(args) -> str:
    """What an interrupted command leaves: --resume is offered only when a checkpoint was written."""
    if args.command != "train":
        return "interrupted"
    from minidalle2.checkpoint import is_trained
    from minidalle2.runs import STAGES

    stages = STAGES if args.stage == "all" else [args.stage]
    if any(is_trained(args.run_dir, stage) for stage in stages):
        again = "rerun the same command to continue" if args.stage == "all" else "continue with --resume"
        return f"interrupted; the last checkpoint is kept, {again}"
    return "interrupted before the first checkpoint; nothing to resume: run the same command (without --resume)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minidalle2", description="DALL-E 2 / unCLIP, stage by stage, on a laptop CPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one stage into a run dir")
    t.add_argument("stage", choices=["clip", "prior-diffusion", "prior-ar", "decoder", "oracle", "upsampler", "all"],
                   help="one stage, or all of them in order (finished ones are kept, unfinished ones resumed)")
    t.add_argument("--preset", default="quick",
                   help="quick (CPU, minutes), full (the shipped run's recipe, about two CPU hours), tiny (tests); "
                        "the decoder also has paper (the paper's recipe on quick's budget)")
    t.add_argument("--run-dir", required=True, help="folder holding every stage of one run")
    t.add_argument("--resume", action="store_true", help="continue the stage's last checkpoint")
    t.add_argument("--data-dir", help="train CLIP on your own folder of images + captions.csv / captions.jsonl")
    t.add_argument("--skip-bad", action="store_true", help="skip bad rows of --data-dir (counted) instead of stopping")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, help="train on this many processes (DDP, one per GPU or sharing the CPU "
                                             "cores): runs the command under torchrun --nproc-per-node N")
    t.add_argument("--threads", type=int, help="CPU threads per process (default: the cores, divided among the "
                                               "processes)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate one stage on the test split, or the whole pipeline")
    e.add_argument("stage", choices=["clip", "priors", "decoder", "upsampler", "pipeline", "variations", "textdiff",
                                     "all"],
                   help="pipeline: score generated images with the attribute oracle; variations: what variations "
                        "keep and change, read by the oracle; textdiff: score text diffs (one-attribute caption "
                        "edits) with it; all: every evaluation, written to RUN/evaluation.json and .md")
    e.add_argument("--run-dir", required=True)
    e.add_argument("-n", type=int, help="priors: the first n test captions only; pipeline, all: images per prompt "
                                        "(default 2); variations: variations per image (default 8); upsampler: "
                                        "pictures of each kind (default 128)")
    e.add_argument("--n-partial", type=int, default=8, help="pipeline, all: images per partial prompt, whose "
                                                              "coverage of what they leave open needs several")
    e.add_argument("--seed", type=int, default=0, help="pipeline, variations, all: sampling seed")
    e.add_argument("--seeds", help="pipeline: several sampling seeds, e.g. 0,1,2; the table shows mean±std; "
                                   "textdiff: the input renders' seeds (default 0,1,2)")
    e.add_argument("--methods", help="textdiff: which text-diff methods (default all: paper,image,analogy,"
                                     "analogy_text)")
    e.add_argument("--rows", help="pipeline: which rows, from diffusion,ar,none,true_z_i,caption (default "
                                  "diffusion,ar,none; true_z_i decodes CLIP's own z_i of the prompts' renders: the "
                                  "decoder's ceiling; caption decodes the caption alone, with no z_i)")
    e.add_argument("--prior-guidance", type=float, help="pipeline: the priors' guidance scale (default: each "
                                                          "prior's own; larger follows the caption more closely)")
    e.add_argument("--json", help="also write the numbers to this JSON file")
    e.add_argument("--report", help="all: the Markdown report's path (default RUN/evaluation.md)")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="training samples/s and sampling time of each stage on this machine")
    b.add_argument("--preset", default="quick", help="model sizes to time (quick, full, tiny)")
    b.add_argument("--stage", action="append", help="only this stage (repeatable)")
    b.add_argument("--demo", action="store_true", help="also time the whole `minidalle2 demo` (trains every stage "
                                                       "from scratch in a temporary folder: minutes)")
    b.add_argument("--nproc", type=int, help="also time the decoder's training on 1 and on this many processes "
                                             "(DDP over gloo, the cores shared among them)")
    b.add_argument("--bf16", action="store_true", help="also time the decoder's training step in fp32 and in bf16 "
                                                       "autocast, where this CPU has native bf16")
    b.add_argument("--json", help="also write the numbers to this JSON file")
    b.set_defaults(func=cmd_bench)

    g = sub.add_parser("generate", help="text to image: caption -> prior -> z_i -> decoder")
    g.add_argument("prompts", nargs="+", help="one or more captions")
    g.add_argument("--prior", default="diffusion", choices=["diffusion", "ar", "none"],
                   help="none: decode the caption's z_t directly (the paper's no-prior ablation)")
    g.add_argument("--guidance", type=float, help="decoder guidance scale (default: the decoder's)")
    g.add_argument("--prior-guidance", type=float, help="prior guidance scale (default: the prior's)")
    g.add_argument("--steps", type=int, help="decoder DDIM steps (default: 50)")

    v = sub.add_parser("vary", help="variations of an image: its (z_i, x_T) decoded with DDIM eta > 0")
    v.add_argument("image")
    v.add_argument("--eta", type=float, default=1.0, help="0 reconstructs the image; larger re-draws more")

    i = sub.add_parser("interpolate", help="slerp between the CLIP image embeddings of two images")
    i.add_argument("image_a")
    i.add_argument("image_b")
    i.add_argument("--latent", default="fixed", choices=["fixed", "slerp"],
                   help="fixed: one random x_T for every step; slerp: slerp the two images' inverted x_T too")

    x = sub.add_parser("textdiff", help="edit an image by a caption change (the paper's z_d = norm(z_t(to) - "
                                        "z_t(from)), or in image space)")
    x.add_argument("image")
    x.add_argument("--from", dest="from_caption", required=True, help="a caption of the image as it is")
    x.add_argument("--to", dest="to_caption", required=True, help="the caption it should move towards")
    x.add_argument("--theta-max", type=float, help="how far to rotate z_i towards the edit's end point (0..1; "
                                                   "default 0.5 for paper and image, 1 for analogy*)")
    x.add_argument("--method", help="paper: z_d = norm(z_t(to) - z_t(from)), the paper's; image: the same with "
                                    "the prior's z_i of the captions; analogy: slerp(z_i, norm(z_i + z_i(to) - "
                                    "z_i(from))); analogy_text: that, the decoder reading the new caption too "
                                    "(default: the best on `minidalle2 evaluate textdiff`, pipeline.EDIT_METHOD)")

    for cmd, func, n in ((g, cmd_generate, 4), (v, cmd_vary, 8), (i, cmd_interpolate, 8), (x, cmd_textdiff, 6)):
        cmd.add_argument("--run-dir", required=True, help="a trained run (`minidalle2 train all`) or data/pretrained")
        cmd.add_argument("-n", type=int, default=n, help=f"images per prompt / steps (default {n})")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--out", required=True, help="the PNG to write")
        cmd.add_argument("--upsample", action="store_true", help="64x64 pictures through the run's upsampler "
                                                                  "(`minidalle2 train upsampler`)")
        cmd.set_defaults(func=func)

    x = sub.add_parser("export", help="copy a finished run's inference files + a manifest (how data/pretrained "
                                      "is made)")
    x.add_argument("--run-dir", required=True)
    x.add_argument("--out", required=True, help="a new folder, e.g. data/pretrained")
    x.add_argument("--note", default="", help="a sentence for the manifest's `note`: anything about how the run was "
                                              "made that its files do not say (e.g. stages trained at another commit)")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="train every stage with the quick preset, write pictures and metrics")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--preset", default="quick")
    d.add_argument("--fresh", action="store_true", help="retrain even if --out already holds a finished run")
    d.add_argument("--pretrained", action="store_true", help="train nothing: use the checkpoints in data/pretrained")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("classroom", help="exercises for a class: list them, release a student copy, grade one")
    c.set_defaults(func=cmd_classroom)
    actions = c.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the exercises, their points and where they live")
    r = actions.add_parser("release", help="write a student copy: solutions replaced, hidden tests left out")
    r.add_argument("out_dir", help="a new (or empty) folder")
    gr = actions.add_parser("grade", help="run the exercise tests on student copies, each exercise on its own with "
                                          "its own time limit (runs the students' code; not a sandbox)")
    gr.add_argument("student_dirs", nargs="+", metavar="student_dir",
                    help="a student's copy of the release, or a folder holding one copy per student")
    gr.add_argument("--json", help="also write the reports to this JSON file: a list, one per copy")
    gr.add_argument("--csv", help="also write one row per copy to this CSV file: points and each exercise's status")
    gr.add_argument("--timeout", type=float, default=grading_timeout(),
                    help="time limit in seconds per exercise (its tests and the import of its test files; "
                         "default %(default)g)")
    gr.add_argument("--exercise", action="append", help="grade only this exercise (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and args.command != "train":  # started by torchrun
            raise UserError(f"torchrun launched `minidalle2 {args.command}`, which runs in one process; only "
                            f"`minidalle2 train` runs on several (run `minidalle2 {args.command}` without torchrun)")
        if getattr(args, "threads", None) is not None and args.threads < 1:
            raise UserError(f"--threads {args.threads}: give a whole number of at least 1")
        if getattr(args, "seed", None) is not None:
            _check_seed(args.seed)  # torch overflows on anything outside 0 .. 2**64 - 1
        if getattr(args, "json", None):
            _check_out(args.json, "--json")  # before minutes of work, not after
        args.func(args)
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; rank 0 says why
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_interrupted(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
