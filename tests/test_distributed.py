"""Training on several processes (distributed.py): two ranks, gloo, a file:// store, in this test's own processes.

The experiments all run in one ``torch.multiprocessing.spawn`` of two ranks (the ``two_ranks`` fixture: about ten
seconds, most of it importing torch twice); each test then checks one property of what they wrote against one
process doing the same on the whole batch.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from minidalle2 import distributed, runs, training
from minidalle2.clip import ClipConfig, local_clip_loss, training_loss
from minidalle2.decoder import Decoder, DecoderConfig
from minidalle2.errors import UserError
from minidalle2.presets import Start
from minidalle2.prior_diffusion import DiffusionPrior, DiffusionPriorConfig
from minidalle2.runs import get_preset
from minidalle2.tools import cli
from minidalle2.unet import UNetConfig

N, B = 2, 4  # ranks, global batch: each rank holds B / N examples
QUIET = dict(progress=False, log=lambda *a: None)


# --- the same small problems, for one process and for each rank ------------------------------------------------

def tiny_decoder() -> Decoder:
    torch.manual_seed(0)
    unet = UNetConfig(image_size=16, base_channels=8, channel_mult=[1, 2], attention_resolutions=[8], heads=2,
                      embed_dim=6, text_width=4)
    return Decoder(DecoderConfig(unet=unet, timesteps=50))


def decoder_batch() -> dict:
    """A whole batch of B, with its noise, timesteps and dropped conditioning fixed (one of each per rank)."""
    g = torch.Generator().manual_seed(1)
    return {"x0": torch.rand(B, 3, 16, 16, generator=g) * 2 - 1, "z_i": F.normalize(torch.randn(B, 6, generator=g), dim=-1),
            "text": torch.randn(B, 5, 4, generator=g), "mask": torch.ones(B, 5, dtype=torch.bool),
            "t": torch.randint(50, (B,), generator=g), "noise": torch.randn(B, 3, 16, 16, generator=g),
            "drop_zi": torch.tensor([True, False, False, False]), "drop_text": torch.tensor([False, True, True, False])}


def decoder_loss(model: Decoder, b: dict) -> torch.Tensor:
    fn = lambda x_t, t: model(x_t, t, b["z_i"], b["text"], b["mask"], b["drop_zi"], b["drop_text"])  # noqa: E731
    return model.diffusion.training_loss(fn, b["x0"], b["t"], b["noise"])["loss"]


def tiny_clip() -> open_clip.CLIP:
    """open_clip's CLIP with a ViT tower: no BatchNorm, whose batch statistics are per rank on a CPU."""
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                                                    "head_width": 16},
                          text_cfg={"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1})


def clip_batch() -> dict:
    g = torch.Generator().manual_seed(2)
    return {"x": torch.randn(B, 3, 16, 16, generator=g), "tokens": torch.randint(1, 60, (B, 8), generator=g),
            "swap": torch.randint(1, 60, (B, 8), generator=g),
            "two": torch.tensor([True, False, True, True]),  # two-object images: 1 on rank 0, 2 on rank 1
            "order": torch.randint(1, 60, (B, 8), generator=g),
            "ordered": torch.tensor([True, True, False, True])}  # a relation stated: 2 on rank 0, 1 on rank 1


CLIP_CFG = ClipConfig(swap_negatives=0.5, order_negatives=0.5)


def clip_step_loss(model, b: dict, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    return training_loss(model, CLIP_CFG, b["x"], b["tokens"], b["swap"][b["two"]], b["two"], rank, world_size,
                         order_tokens=b["order"][b["ordered"]], ordered=b["ordered"])


def share(batch: dict, rank: int) -> dict:
    """Rank ``rank``'s B / N examples of the batch."""
    return {k: v.chunk(N)[rank] for k, v in batch.items()}


def one_step(model: torch.nn.Module, loss_fn) -> dict:
    """One plain SGD step through distributed.wrap: SGD's update is the gradient itself, so an error in it shows
    (Adam's first step is lr * sign(g) and would hide a gradient twice too large)."""
    batch_loss = distributed.wrap(model, lambda step: loss_fn())  # (kept: DDP averages during the backward)
    loss = batch_loss(0)
    loss.backward()
    out = {f"grad/{n}": p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    out.update({f"param/{n}": p.detach().clone() for n, p in model.named_parameters()})
    out["loss"] = distributed.mean(loss).reshape(1)
    return out


# --- what each rank does -----------------------------------------------------------------------------------------

class Stop(Exception):
    """Stands for a crash in the middle of a run."""


def train_decoder(run_dir: Path, out: Path, stop_at: int | None = None, resume: bool = False) -> dict:
    """runs.train of a 4-step tiny decoder (checkpoints at 2 and 4), stopped before ``stop_at`` if given; each
    checkpoint write is counted in ``out``/writes.txt. Returns the trained model's weights."""
    preset = get_preset("decoder", "tiny")
    preset.train = dataclasses.replace(preset.train, steps=4, ckpt_every=2, sample_every=2)
    real_setup, real_atomic, model = runs.STAGE["decoder"].setup, training.atomic_dir, {}

    def setup(*args):
        job = real_setup(*args)
        model["decoder"], step_loss = job.model, job.step_loss

        def stopping(step):
            if step == stop_at:
                raise Stop
            return step_loss(step)
        job.step_loss = stopping
        return job

    @contextlib.contextmanager
    def counted(final):
        with open(out / "writes.txt", "a") as f:
            f.write(f"{dist.get_rank()}\n")
        with real_atomic(final) as tmp:
            yield tmp

    runs.STAGE["decoder"] = dataclasses.replace(runs.STAGE["decoder"], setup=setup)
    training.atomic_dir = counted
    try:
        runs.train("decoder", run_dir, preset, resume=resume, **QUIET)
    except Stop:
        pass
    finally:
        runs.STAGE["decoder"] = dataclasses.replace(runs.STAGE["decoder"], setup=real_setup)
        training.atomic_dir = real_atomic
    return {k: v.detach().clone().contiguous() for k, v in model["decoder"].state_dict().items()}


def two_phase_preset():
    """The tiny decoder trained as the full one is: a base without the sketch, then the sketch and a few steps."""
    tiny = get_preset("decoder", "tiny")
    base = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, unet=dataclasses.replace(
        tiny.model.unet, z_i_sketch=0)), train=dataclasses.replace(tiny.train, steps=4, ckpt_every=2, sample_every=2))
    return dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, steps=2, ckpt_every=2, sample_every=0),
                               start=Start(base, fit_steps=5, fit_batch=8))


def worker(rank: int, out: Path, runs_dirs: list) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=N)
    try:
        mine = share(decoder_batch(), rank)
        model = tiny_decoder()
        save_file(one_step(model, lambda: decoder_loss(model, mine)), str(out / f"decoder_{rank}.safetensors"))

        mine = share(clip_batch(), rank)
        model = tiny_clip()
        save_file(one_step(model, lambda: clip_step_loss(model, mine, rank, N)), str(out / f"clip_{rank}.safetensors"))

        g = torch.Generator().manual_seed(3)  # the contrastive loss alone, on given features
        z_i, z_t = (F.normalize(torch.randn(B, 8, generator=g), dim=-1).chunk(N)[rank] for _ in range(2))
        gathered = [[torch.empty_like(z) for _ in range(N)] for z in (z_i, z_t)]
        dist.all_gather(gathered[0], z_i)
        dist.all_gather(gathered[1], z_t)
        ours = local_clip_loss(z_i, z_t, torch.cat(gathered[0]), torch.cat(gathered[1]), 5.0, rank)
        theirs = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=N)(z_i, z_t, 5.0)
        save_file({"ours": ours.reshape(1), "open_clip": theirs.reshape(1)}, str(out / f"gathered_{rank}.safetensors"))

        whole = train_decoder(Path(runs_dirs[0]), out)
        train_decoder(Path(runs_dirs[1]), out, stop_at=3)
        resumed = train_decoder(Path(runs_dirs[1]), out, resume=True)
        save_file({**{f"whole/{k}": v for k, v in whole.items()}, **{f"resumed/{k}": v for k, v in resumed.items()}},
                  str(out / f"train_{rank}.safetensors"))

        runs.train("decoder", Path(runs_dirs[2]), two_phase_preset(), **QUIET)
        state = runs.load("decoder", Path(runs_dirs[2])).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"start_{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(clip_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    run_dirs = [out / "run_whole", out / "run_resumed", out / "run_two_phases"]
    for run in run_dirs:
        shutil.copytree(clip_run[0], run)
    mp.spawn(worker, args=(out, [str(r) for r in run_dirs]), nprocs=N, join=True)
    return out, run_dirs


def ranks(out: Path, name: str) -> list[dict]:
    return [load_file(str(out / f"{name}_{r}.safetensors")) for r in range(N)]


# --- the tests ---------------------------------------------------------------------------------------------------

def test_both_ranks_hold_the_same_parameters_after_a_step(two_ranks):
    for name in ("decoder", "clip"):
        first, second = ranks(two_ranks[0], name)
        for key in first:
            if key.startswith("param/"):
                assert torch.equal(first[key], second[key]), (name, key)


def test_decoder_step_of_two_ranks_on_halves_equals_one_process_on_the_whole_batch(two_ranks):
    model = tiny_decoder()
    alone = one_step(model, lambda: decoder_loss(model, decoder_batch()))
    for rank, result in enumerate(ranks(two_ranks[0], "decoder")):
        assert result.keys() == alone.keys()
        for key, value in alone.items():
            torch.testing.assert_close(result[key], value, rtol=1e-4, atol=1e-6, msg=f"rank {rank} {key}")


def test_clip_step_with_gathered_features_equals_one_process_on_the_whole_batch(two_ranks):
    """Each image is scored against every rank's captions, and the swap loss is the whole batch's mean (the two
    ranks hold one and two two-object images): the loss, the gradients and the step match one process."""
    model = tiny_clip()
    alone = one_step(model, lambda: clip_step_loss(model, clip_batch()))
    for rank, result in enumerate(ranks(two_ranks[0], "clip")):
        for key, value in alone.items():
            torch.testing.assert_close(result[key], value, rtol=1e-4, atol=1e-6, msg=f"rank {rank} {key}")


def test_gathered_contrastive_loss_averages_to_the_whole_batch_loss(two_ranks):
    g = torch.Generator().manual_seed(3)
    z_i, z_t = (F.normalize(torch.randn(B, 8, generator=g), dim=-1) for _ in range(2))
    results = ranks(two_ranks[0], "gathered")
    for r in results:  # ours is open_clip's local loss
        torch.testing.assert_close(r["ours"], r["open_clip"])
    torch.testing.assert_close(sum(r["ours"] for r in results) / N, open_clip.ClipLoss()(z_i, z_t, 5.0).reshape(1))
    assert not torch.allclose(results[0]["ours"], results[1]["ours"])  # each rank's share differs


def test_checkpoints_are_written_once_by_rank_0_and_resume_continues_the_run(two_ranks):
    out, (whole, resumed, _) = two_ranks
    # whole: steps 2 and 4; resumed: step 2, stopped at 3, then step 4 after --resume
    assert (out / "writes.txt").read_text().split() == ["0"] * 4
    for run in (whole, resumed):
        state = json.loads((run / "decoder" / "train_state.json").read_text())
        assert state["step"] == 4 and len(state["history"]) == 4
        assert state["config"]["train"]["batch_size"] == get_preset("decoder", "tiny").train.batch_size  # the whole
        assert sorted(p.name for p in (run / "decoder_samples").iterdir()) == ["step_00002.png", "step_00004.png"]
        assert sorted(p.name for p in run.iterdir() if p.name.startswith("decoder")) == ["decoder", "decoder_samples"]
    first, second = ranks(out, "train")
    for key in first:
        assert torch.equal(first[key], second[key]), key  # every rank ends with the same weights
        if key.startswith("whole/"):
            torch.testing.assert_close(first["resumed/" + key[6:]], first[key], msg=key)
    assert runs.load("decoder", whole) is not None


def test_a_two_phase_recipe_trains_its_base_then_starts_every_rank_from_it(two_ranks):
    """presets.Start under two ranks: the base trains and is written once, the sketch is fitted on each rank, and
    both end with the same weights."""
    out, (_, _, run) = two_ranks
    base = json.loads((run / "decoder_base" / "train_state.json").read_text())
    state = json.loads((run / "decoder" / "train_state.json").read_text())
    assert base["step"] == 4 and state["step"] == 2 and state["base"]["step"] == 4
    assert sorted(p.name for p in (run / "decoder_samples").iterdir()) == ["step_00002.png", "step_00004.png"]
    first, second = ranks(out, "start")
    assert any(k.startswith("unet.sketch.") for k in first)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_no_parameter_goes_unused_when_nothing_is_dropped():
    """DDP needs a gradient for every parameter in every step: the learned nulls go through torch.where, so they
    get a zero one in a batch where no caption (or z_i) is dropped."""
    g = torch.Generator().manual_seed(0)
    prior = DiffusionPrior(DiffusionPriorConfig(width=16, layers=1, heads=2, timesteps=50, cond_drop=0.0), 8, 4, 5)
    prior.loss(F.normalize(torch.randn(B, 8), dim=-1), torch.randn(B, 5, 4), torch.ones(B, 5, dtype=torch.bool),
               F.normalize(torch.randn(B, 8), dim=-1), generator=g).backward()
    decoder = tiny_decoder()
    no_drop = {**decoder_batch(), "drop_zi": torch.zeros(B, dtype=torch.bool),
               "drop_text": torch.zeros(B, dtype=torch.bool)}
    decoder_loss(decoder, no_drop).backward()
    for model in (prior, decoder):
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert not unused
    assert prior.caption.null_text.grad.abs().sum() == 0  # in the graph, with no effect


def test_each_rank_draws_its_share_with_its_own_seed(monkeypatch):
    preset = get_preset("decoder", "tiny")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(distributed.local_preset(preset).train)
    assert [s.batch_size for s in shares] == [preset.train.batch_size // 2] * 2
    assert shares[0].seed == preset.train.seed and shares[1].seed != preset.train.seed  # rank 0: the run's own
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(UserError, match="does not split over 3"):
        distributed.local_preset(preset)


# --- the command line --------------------------------------------------------------------------------------------

def test_nproc_launches_torchrun_with_the_same_command(monkeypatch, tmp_path):
    started = {}

    class Launched:
        def __init__(self, argv, env):
            started.update(argv=argv, env=env)

        def wait(self):
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", Launched)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    run = tmp_path / "run"
    assert cli.main(["train", "decoder", "--preset", "tiny", "--nproc", "4", "--run-dir", str(run), "--no-progress"]) == 0
    assert started["argv"][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "-m",
                                   "minidalle2", "train", "decoder", "--preset", "tiny", "--run-dir", str(run),
                                   "--no-progress"]
    assert started["env"]["OMP_NUM_THREADS"] == "2"  # 8 cores over 4 processes


@pytest.mark.parametrize("argv, said", [
    (["train", "decoder", "--nproc", "0"], "--nproc 0: choose from 1 to"),
    (["train", "decoder", "--nproc", "999"], "--nproc 999: choose from 1 to"),
    (["train", "oracle", "--preset", "tiny", "--nproc", "3"], "--nproc 3 does not divide the oracle batch of 16"),
    (["train", "decoder", "--threads", "0"], "--threads 0: give a whole number"),
])
def test_bad_nproc_is_one_line_and_status_2(argv, said, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert cli.main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bench_refuses_a_bad_nproc_before_timing_anything(capsys):
    assert cli.main(["bench", "--stage", "decoder", "--nproc", "0"]) == 2
    assert "--nproc 0: choose a number of processes" in capsys.readouterr().err


def test_torchrun_launch_of_a_command_that_does_not_train_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["evaluate", "decoder", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only `minidalle2 train` runs on several" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train", "decoder", "--nproc", "2", "--run-dir", str(tmp_path)]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_trains_the_tiny_decoder_end_to_end(clip_run_copy):
    """The command as a user types it: two worker processes, gloo, a checkpoint, the loss of every step."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "minidalle2", "train", "decoder", "--preset", "tiny", "--run-dir",
                             str(clip_run_copy), "--no-progress"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = get_preset("decoder", "tiny").train.steps
    assert result.stdout.count(f"decoder: {steps} steps") == 1  # said once, by rank 0
    state = json.loads((clip_run_copy / "decoder" / "train_state.json").read_text())
    assert state["step"] == steps and len(state["history"]) == steps
    assert runs.load("decoder", clip_run_copy) is not None


def test_bench_times_the_decoder_on_two_processes():
    from minidalle2.tools.bench import bench_decoder_processes

    result = bench_decoder_processes("tiny", 2, steps=2)
    assert result["processes"] == 2 and result["batch_size"] == get_preset("decoder", "tiny").train.batch_size
    assert result["s_per_step"] > 0 and result["train_samples_per_s"] > 0
