"""Experiments on the shared Gaussian diffusion: closed forms, sampler identities, and one data set
(x_0 ~ N(mu, sigma^2 I)) whose optimal denoiser is known exactly, so samplers can be checked end to end."""

import math

import pytest
import torch

from minidalle2.diffusion import (GaussianDiffusion, classifier_free_guidance, cosine_beta_schedule,
                                  linear_beta_schedule)

MU = torch.tensor([1.0, -2.0, 0.5, 3.0])  # (D,) mean of the toy data
SIGMA = 0.5  # its standard deviation in every dimension


def optimal_model(diffusion, mu=MU, sigma=SIGMA):
    """model_fn for x_0 ~ N(mu, sigma^2 I), predicting what diffusion.predict asks for. With a = sqrt(abar_t):
    E[x_0 | x_t] = mu + a sigma^2 / (abar sigma^2 + 1 - abar) (x_t - a mu), the best any network can do."""
    def x0_model(x_t, t):
        abar = diffusion.alphas_cumprod[t].float().view(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, ...)
        a = abar.sqrt()
        return mu + a * sigma ** 2 / (abar * sigma ** 2 + 1 - abar) * (x_t - a * mu)

    def eps_model(x_t, t):
        return diffusion.predict_eps_from_x0(x_t, t, x0_model(x_t, t))

    def v_model(x_t, t):
        return diffusion.v_target(x0_model(x_t, t), t, eps_model(x_t, t))

    return {"x0": x0_model, "eps": eps_model, "v": v_model}[diffusion.predict]


def full(t, batch):
    return torch.full((batch,), t, dtype=torch.long)


@pytest.fixture(autouse=True)
def seeded_single_thread():
    """Seeded, and one thread: on a busy shared CPU, torch's threads wait on each other for every small op."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("T", [100, 1000])
def test_schedule_goes_from_data_to_noise(schedule, T):
    d = GaussianDiffusion(T, schedule)
    abar = d.alphas_cumprod
    assert d.betas.dtype == torch.float64 and d.betas.shape == (T,)
    assert (d.betas > 0).all() and (d.betas <= 0.999).all()
    assert (abar[1:] < abar[:-1]).all(), "abar_t must decrease: each step adds noise"
    assert abar[0] > 0.99 and abar[-1] < 1e-3, "x_0 is nearly data, x_{T-1} nearly pure noise"
    torch.testing.assert_close(abar, torch.cumprod(1 - d.betas, 0))
    torch.testing.assert_close(d.alphas_cumprod_prev[1:], abar[:-1])
    assert d.alphas_cumprod_prev[0] == 1.0


def test_linear_schedule_is_ddpm_at_1000_steps():
    betas = linear_beta_schedule(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)


def test_cosine_schedule_clips_the_last_beta():
    betas = cosine_beta_schedule(50, max_beta=0.5)
    assert betas.max().item() == 0.5 and (betas[:-5] < 0.5).all()


# ---------------------------------------------------------------- forward process
def test_q_sample_moments_match_q_of_x_t_given_x_0():
    d = GaussianDiffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0 = MU.expand(20000, 4)  # (N, D), the same x_0 many times
    for t in [0, 250, 999]:
        abar = d.alphas_cumprod[t].item()
        x_t = d.q_sample(x0, full(t, 20000), noise=torch.randn(20000, 4, generator=g))
        torch.testing.assert_close(x_t.mean(0), math.sqrt(abar) * MU, atol=0.03, rtol=0)
        torch.testing.assert_close(x_t.var(0), torch.full((4,), 1 - abar), atol=0.04, rtol=0.04)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0). Completing the square:
    precision = alpha_t / beta_t + 1 / (1 - abar_{t-1}),
    mean = (sqrt(alpha_t) x_t / beta_t + sqrt(abar_{t-1}) x_0 / (1 - abar_{t-1})) / precision."""
    d = GaussianDiffusion(100, "linear")
    x0, x_t = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 30, 50, 70, 98, 99])  # (8,)
    beta, abar_prev = d.betas[t][:, None], d.alphas_cumprod_prev[t][:, None]
    precision = (1 - beta) / beta + 1 / (1 - abar_prev)
    mean = ((1 - beta).sqrt() * x_t / beta + abar_prev.sqrt() * x0 / (1 - abar_prev)) / precision
    got_mean, got_var, got_logvar = d.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, (1 / precision).expand(8, 4))
    torch.testing.assert_close(got_logvar, got_var.log())


def test_posterior_at_t0_is_the_data_itself():
    d = GaussianDiffusion(100)
    x0, x_t = torch.randn(3, 4), torch.randn(3, 4)
    mean, var, logvar = d.q_posterior_mean_variance(x0, x_t, full(0, 3))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all() and torch.isfinite(logvar).all()


def test_x0_and_eps_predictions_invert_each_other():
    """Up to t = 900: at T-1, abar ~ 1e-9, x_t holds almost no x_0 and float32 rounding is amplified 1e4 times."""
    d = GaussianDiffusion(1000)
    x0, eps = torch.randn(6, 4), torch.randn(6, 4)
    t = torch.tensor([0, 1, 10, 300, 600, 900])
    x_t = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_x0_from_eps(x_t, t, eps), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(d.predict_eps_from_x0(x_t, t, x0), eps, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("predict", ["eps", "x0", "v"])
def test_the_three_targets_convert_exactly(predict):
    """eps, x_0 and v are each a function of the others at a given x_t: a model that outputs the exact target
    of any kind must give back x_0 and eps, to float64 precision, at every t (T-1 included)."""
    d = GaussianDiffusion(1000, predict=predict)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t = d.q_sample(x0, t, eps)
    target = d.target(x0, t, eps)
    x0_hat, eps_hat = d._predict(lambda x, t: target, x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=1e-6, rtol=0)
    # v by its definition, and the closed-form inverses
    a, b = d.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1), d.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    v = a * eps - b * x0
    torch.testing.assert_close(d.v_target(x0, t, eps), v, atol=1e-12, rtol=0)
    torch.testing.assert_close(d.predict_x0_from_v(x_t, t, v), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(b * x_t + a * v, eps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("predict", ["eps", "x0", "v"])
def test_min_snr_weight_is_its_closed_form(predict):
    """Hang et al. 2023 weight the x_0 error by min(SNR_t, gamma); on a hand-made batch the weighted loss must be
    that times the x_0 error, whichever target the model predicts."""
    gamma = 5.0
    d = GaussianDiffusion(1000, predict=predict, loss_weighting="min_snr", snr_gamma=gamma)
    t = torch.tensor([1, 100, 300, 600, 950])
    abar = d.alphas_cumprod[t]
    snr = abar / (1 - abar)
    x0, eps = torch.zeros(5, 2, dtype=torch.float64), torch.ones(5, 2, dtype=torch.float64)
    x0_error = 0.1  # the model's x_0 guess is off by 0.1 in every dimension
    x_t = d.q_sample(x0, t, eps)

    def model(x, tt):  # the exact target of a model whose x_0 guess is x0 + 0.1
        x0_hat = x0 + x0_error
        return d.target(x0_hat, tt, d.predict_eps_from_x0(x, tt, x0_hat))

    out = d.training_loss(model, x0, t, eps)
    expected = torch.minimum(snr, torch.full_like(snr, gamma)) * x0_error ** 2
    torch.testing.assert_close(out["per_example"], expected, rtol=1e-6, atol=0)
    assert d.loss_weighting == "min_snr" and GaussianDiffusion(10).loss_weight(t.clamp(max=9)).eq(1).all()


# ---------------------------------------------------------------- reverse process
def test_clipped_x0_prediction_stays_consistent_with_x_t():
    """After clipping x0_hat to [-1, 1], eps_hat must be recomputed so x_t = a x0_hat + b eps_hat still holds."""
    d = GaussianDiffusion(100, predict="x0")
    x_t, t = torch.randn(5, 4), torch.tensor([1, 20, 40, 60, 99])
    out = d.p_mean_variance(lambda x, t: 3 * torch.randn_like(x), x_t, t, clip_x0=1.0)
    assert out["pred_x0"].abs().max() <= 1.0
    a = d.sqrt_alphas_cumprod[t].float()[:, None]
    b = d.sqrt_one_minus_alphas_cumprod[t].float()[:, None]
    torch.testing.assert_close(a * out["pred_x0"] + b * out["pred_eps"], x_t, atol=1e-4, rtol=1e-4)
    mean, _, _ = d.q_posterior_mean_variance(out["pred_x0"], x_t, t)
    torch.testing.assert_close(out["mean"], mean)


def test_ddim_timesteps_are_strided_and_descending():
    d = GaussianDiffusion(1000)
    ts = d.ddim_timesteps(64)  # how the paper samples its prior
    assert len(ts) == 64 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert d.ddim_timesteps(1000) == list(range(999, -1, -1))
    assert d.ddim_timesteps(1) == [999]


def test_ddim_with_eta_1_over_all_steps_is_ddpm():
    """With t_prev = t - 1 and eta = 1, DDIM's sigma_t^2 is beta_tilde_t: the very same Markov chain."""
    d = GaussianDiffusion(100)
    model = optimal_model(d)
    ddpm = d.p_sample_loop(model, (50, 4), generator=torch.Generator().manual_seed(1))
    ddim = d.ddim_sample_loop(model, (50, 4), steps=100, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


def test_ddim_eta_0_is_deterministic():
    d = GaussianDiffusion(100)
    model, noise = optimal_model(d), torch.randn(8, 4)
    a = d.ddim_sample_loop(model, (8, 4), steps=20, noise=noise, generator=torch.Generator().manual_seed(1))
    b = d.ddim_sample_loop(model, (8, 4), steps=20, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    c = d.ddim_sample_loop(model, (8, 4), steps=20, eta=1.0, noise=noise, generator=g1)
    e = d.ddim_sample_loop(model, (8, 4), steps=20, eta=1.0, noise=noise, generator=g2)
    assert not torch.allclose(c, e), "eta > 0 must inject fresh noise"


def test_ddim_trajectory_has_one_x0_guess_per_step():
    d = GaussianDiffusion(100, predict="x0")
    x, traj = d.ddim_sample_loop(optimal_model(d), (8, 4), steps=10, return_trajectory=True)
    assert len(traj) == 10 and torch.equal(traj[-1], x)


def test_ddim_inversion_round_trip_error_shrinks_like_one_over_steps():
    """Encoding a real x_0 to x_T and decoding it back is exact up to DDIM's first-order discretization error."""
    d = GaussianDiffusion(1000)
    model = optimal_model(d)
    x0 = MU + SIGMA * torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in [50, 250]:
        x_T = d.ddim_reverse_sample_loop(model, x0, steps=steps)
        x0_back = d.ddim_sample_loop(model, x0.shape, steps=steps, noise=x_T)
        errors[steps] = (x0_back - x0).abs().max().item()
    assert errors[250] < 0.03
    assert errors[50] / errors[250] == pytest.approx(5, rel=0.3)


def test_inversion_starts_from_the_data_itself():
    """At t = -1 x_t is the real x_0, so the first inversion step keeps it as x0_hat, whatever the model says."""
    d = GaussianDiffusion(20, predict="x0")
    x0 = torch.randn(4, 4)
    out = d.ddim_reverse_sample(lambda x, t: torch.zeros_like(x), x0, full(-1, 4), 0)
    torch.testing.assert_close(out["pred_x0"], x0)


@pytest.mark.parametrize("predict", ["eps", "x0", "v"])
def test_samplers_recover_the_data_distribution(predict):
    """With the optimal denoiser of N(mu, sigma^2 I) plugged in, every sampler must produce that distribution."""
    d = GaussianDiffusion(200, predict=predict)
    model, g, n = optimal_model(d), torch.Generator().manual_seed(0), 4000
    samples = {
        "ddpm": d.p_sample_loop(model, (n, 4), generator=g),
        "ddim eta=0": d.ddim_sample_loop(model, (n, 4), steps=50, generator=g),
        "ddim eta=1": d.ddim_sample_loop(model, (n, 4), steps=200, eta=1.0, generator=g),
    }
    for name, x in samples.items():
        torch.testing.assert_close(x.mean(0), MU, atol=0.03, rtol=0, msg=name)
        torch.testing.assert_close(x.std(0), torch.full((4,), SIGMA), atol=0.03, rtol=0, msg=name)


@pytest.mark.parametrize("predict", ["eps", "x0"])
def test_images_and_embeddings_follow_the_same_maths(predict):
    """The decoder's (B, C, H, W) must be treated exactly like the prior's (B, D) with D = C * H * W."""
    d = GaussianDiffusion(50, predict=predict)
    mu = torch.linspace(-1, 1, 48)
    flat, image = optimal_model(d, mu=mu), optimal_model(d, mu=mu.view(3, 4, 4))
    x0, noise, t = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), torch.tensor([0, 3, 17, 30, 49])
    torch.testing.assert_close(d.q_sample(x0, t, noise).flatten(1), d.q_sample(x0.flatten(1), t, noise.flatten(1)))
    for sampler in [lambda m, x: d.ddim_sample_loop(m, x.shape, steps=10, noise=x),
                    lambda m, x: d.ddim_reverse_sample_loop(m, x, steps=10),
                    lambda m, x: d.p_sample_loop(m, x.shape, noise=x, generator=torch.Generator().manual_seed(0))]:
        out = sampler(image, noise)
        assert out.shape == (5, 3, 4, 4) and out.dtype == torch.float32
        torch.testing.assert_close(out.flatten(1), sampler(flat, noise.flatten(1)))
    loss = d.training_loss(image, x0, t, noise)
    assert loss["per_example"].shape == (5,) and loss["loss"].shape == ()


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("predict", ["eps", "x0"])
def test_optimal_model_reaches_the_irreducible_loss(predict):
    """Even the best model cannot know x_0 from x_t, so its MSE is the posterior variance per dimension:
    x0-target: Var[x_0 | x_t] = sigma^2 (1 - abar) / (abar sigma^2 + 1 - abar)
    eps-target: Var[eps | x_t] = abar sigma^2 / (abar sigma^2 + 1 - abar)"""
    d = GaussianDiffusion(1000, predict=predict)
    g = torch.Generator().manual_seed(0)
    x0 = MU + SIGMA * torch.randn(20000, 4, generator=g)
    for t in [100, 500, 900]:
        abar = d.alphas_cumprod[t].item()
        denom = abar * SIGMA ** 2 + 1 - abar
        expected = (SIGMA ** 2 * (1 - abar) if predict == "x0" else abar * SIGMA ** 2) / denom
        loss = d.training_loss(optimal_model(d), x0, full(t, 20000), torch.randn(20000, 4, generator=g))
        assert loss["loss"].item() == pytest.approx(expected, rel=0.04)


def test_training_loss_trains_a_tiny_model():
    d = GaussianDiffusion(100, predict="x0")
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 4)  # input (x_t, t / T)
    model = lambda x_t, t: net(torch.cat([x_t, t[:, None].float() / 100], dim=1))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x0 = MU + SIGMA * torch.randn(256, 4)
    losses = []
    for _ in range(40):
        loss = d.training_loss(model, x0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5


def test_timesteps_are_uniform_and_reproducible():
    d = GaussianDiffusion(10)
    t = d.sample_timesteps(10000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9
    assert torch.bincount(t).min() > 900
    assert torch.equal(t, d.sample_timesteps(10000, generator=torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------- guidance and bad input
def test_classifier_free_guidance_interpolates_and_extrapolates():
    cond, uncond = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), cond + 2 * (cond - uncond))


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="cosine"):
        GaussianDiffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="x0"):
        GaussianDiffusion(predict="score")
    with pytest.raises(ValueError, match="min_snr"):
        GaussianDiffusion(loss_weighting="edm")
    d = GaussianDiffusion(100)
    model = optimal_model(d)
    for steps in [0, 101]:
        with pytest.raises(ValueError, match="steps"):
            d.ddim_sample_loop(model, (2, 4), steps=steps)
        with pytest.raises(ValueError, match="steps"):
            d.ddim_reverse_sample_loop(model, torch.zeros(2, 4), steps=steps)
    with pytest.raises(ValueError, match="eta"):
        d.ddim_sample_loop(model, (2, 4), steps=10, eta=-0.5)


def test_linear_schedule_stays_a_valid_process_for_few_timesteps():
    from minidalle2.diffusion import linear_beta_schedule

    for T in (10, 49, 1000):
        betas = linear_beta_schedule(T)
        assert (betas > 0).all() and (betas < 1).all(), T
        assert torch.isfinite(GaussianDiffusion(T, "linear").alphas_cumprod).all()
