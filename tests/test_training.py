"""The one training loop: its learning-rate schedule, the EMA of the weights, and an exact resume."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from minidalle2 import training
from minidalle2.checkpoint import save_weights
from minidalle2.errors import UserError
from minidalle2.presets import Preset
from minidalle2.training import EMA, TrainConfig, step_generator, train, warmup_cosine


@dataclass
class LineConfig:
    width: int = 6


def make_preset(steps=30, ckpt_every=10, ema_decay=0.9, warmup=5):
    return Preset(LineConfig(), TrainConfig(batch_size=8, steps=steps, lr=1e-2, weight_decay=0.1,
                                            warmup_steps=warmup, ema_decay=ema_decay, ckpt_every=ckpt_every))


def make_job(preset, interrupt_at=None):
    """A small regression model and its batch loss, drawn from (seed, step) as every stage's is."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, preset.model.width), torch.nn.Tanh(),
                                torch.nn.Linear(preset.model.width, 1))
    target = torch.nn.Linear(4, 1)

    def step_loss(step):
        if step == interrupt_at:
            raise KeyboardInterrupt
        x = torch.randn(preset.train.batch_size, 4, generator=step_generator(preset.train.seed, step))
        return ((model(x) - target(x).detach()) ** 2).mean()

    def write(folder, ema, step):
        save_weights(folder / "model.safetensors", model, ema.shadow if ema is not None else None)
    return model, step_loss, write


def test_warmup_then_cosine_matches_its_closed_form():
    warmup, total = 10, 110
    factors = [warmup_cosine(s, warmup, total) for s in range(total + 1)]
    assert factors[0] == pytest.approx(1 / warmup) and factors[warmup - 1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(factors[:warmup], factors[1:warmup]))  # linear warm-up
    for s in (warmup, 35, 60, 85, total):  # 1/2 (1 + cos(pi p)), p the share of the decay done
        p = (s - warmup) / (total - warmup)
        assert factors[s] == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
    assert factors[60] == pytest.approx(0.5) and factors[total] == pytest.approx(0.0)
    assert all(b <= a for a, b in zip(factors[warmup:], factors[warmup + 1:]))  # never rises after the peak


def test_the_optimizer_runs_at_the_scheduled_rate(tmp_path, monkeypatch):
    """The rate each step's update uses is peak lr x warmup_cosine(step), also across a resume."""
    preset = make_preset(steps=20, ckpt_every=7)
    optimizers, rates = [], {}
    real_adamw = training.adamw
    monkeypatch.setattr(training, "adamw", lambda params, **kw: optimizers.append(real_adamw(params, **kw))
                        or optimizers[-1])
    for interrupt_at, resume in ((12, False), (None, True)):
        model, step_loss, write = make_job(preset, interrupt_at)

        def recorded(step, step_loss=step_loss):
            rates[step] = optimizers[-1].param_groups[0]["lr"]  # the rate opt.step() will use at this step
            return step_loss(step)
        try:
            train(tmp_path / "stage", model, preset, recorded, write, resume=resume, progress=False)
        except KeyboardInterrupt:
            pass
    assert sorted(rates) == list(range(20))
    for step, rate in rates.items():
        assert rate == pytest.approx(preset.train.lr * warmup_cosine(step, 5, 20), abs=1e-12), step


def test_ema_update_is_the_exponential_average_of_the_weights():
    """theta_ema <- d theta_ema + (1 - d) theta, checked after each of several updates against its sum form
    theta_ema_k = d^k theta_0 + (1 - d) sum_j d^(k - j) theta_j."""
    torch.manual_seed(0)
    model, d = torch.nn.Linear(3, 2), 0.8
    ema = EMA(model, d)
    history = [model.weight.detach().clone()]
    for k in range(1, 6):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        history.append(model.weight.detach().clone())
        ema.update(model)
        expected = d ** k * history[0] + (1 - d) * sum(d ** (k - j) * history[j] for j in range(1, k + 1))
        torch.testing.assert_close(ema.shadow["weight"], expected)


def test_an_interrupted_run_resumes_to_the_same_weights_ema_and_optimizer_state(tmp_path):
    preset = make_preset()
    straight, *job = make_job(preset)
    train(tmp_path / "straight", straight, preset, *job, progress=False)

    _, *job = make_job(preset, interrupt_at=23)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", _, preset, *job, progress=False)
    assert json.loads((tmp_path / "resumed" / "train_state.json").read_text())["step"] == 20  # the last checkpoint
    resumed, *job = make_job(preset)  # a fresh process: new model, new optimizer
    info = train(tmp_path / "resumed", resumed, preset, *job, resume=True, progress=False)
    assert info["step"] == preset.train.steps and len(info["history"]) == preset.train.steps

    a = load_file(str(tmp_path / "straight" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "train_state.safetensors"))
    assert set(a) == set(b)
    for group in ("model/", "ema/", "optimizer/"):
        keys = [k for k in a if k.startswith(group)]
        assert keys, group
        for k in keys:
            torch.testing.assert_close(a[k], b[k], msg=k)
    first = json.loads((tmp_path / "straight" / "train_state.json").read_text())
    second = json.loads((tmp_path / "resumed" / "train_state.json").read_text())
    assert first["history"] == second["history"]


def test_a_resume_with_another_preset_is_refused(tmp_path):
    preset = make_preset(steps=10, ckpt_every=10)
    model, *job = make_job(preset)
    train(tmp_path / "stage", model, preset, *job, progress=False)
    other = make_preset(steps=20, ckpt_every=10, ema_decay=0.5)
    model, *job = make_job(other)
    with pytest.raises(UserError, match="different preset"):
        train(tmp_path / "stage", model, other, *job, resume=True, progress=False)
