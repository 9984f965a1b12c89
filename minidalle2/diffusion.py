"""Gaussian diffusion (Ho et al. 2020, DDPM; Song et al. 2021, DDIM), shared by the prior and the decoder.

unCLIP trains two diffusion models: the prior over CLIP image embeddings z_i, tensors (B, D), and the decoder
over images, tensors (B, C, H, W). Both use the same forward process and samplers, so they live here once.
Every per-timestep coefficient is a float64 buffer of shape (T,), gathered at t and broadcast to x's shape.

Notation (improved-diffusion / the DDPM paper):
    beta_t                noise added at step t, t = 0 .. T-1
    alpha_t = 1 - beta_t
    abar_t = prod_{s<=t} alpha_s          (alphas_cumprod; abar_{-1} = 1 means "clean data")
    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)

A model_fn(x_t, t) -> prediction is any callable; t is a LongTensor (B,) of original indices in [0, T), also
when DDIM skips steps. It predicts one of three targets, each an exact function of the others at a given x_t:
    eps                   the noise (DDPM, GLIDE, the paper's decoder)
    x0                    the clean data (the paper's prior predicts z_i directly)
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0      (Salimans & Ho 2022, "progressive distillation")
with SNR_t = abar_t / (1 - abar_t):
    x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v       eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v
"""

import math

import torch
from tqdm.auto import tqdm

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTINGS = ("none", "min_snr")


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021: abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2),
    beta_t = min(1 - abar(t+1) / abar(t), max_beta). Clipping avoids beta = 1 (a singularity) at t = T-1."""
    T = num_timesteps
    # BEGIN SOLUTION
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(T)]
    # END SOLUTION
    return torch.tensor(betas, dtype=torch.float64)  # (T,)


def linear_beta_schedule(num_timesteps: int) -> torch.Tensor:
    """DDPM's betas from 1e-4 to 0.02 over T = 1000 steps, rescaled by 1000 / T so that any T ends near abar = 0.
    For T < 50 the rescaled betas would pass 1, so they are capped at 0.999 as in the cosine schedule."""
    scale = 1000 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64).clamp(max=0.999)  # (T,)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Ho & Salimans 2021: pred = uncond + scale * (cond - uncond). scale 1 is the conditional model, scale 0
    the unconditional one, scale > 1 pushes further along the direction the condition adds."""
    # BEGIN SOLUTION
    return uncond + scale * (cond - uncond)
    # END SOLUTION


def _broadcast(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 coefficients -> (B, 1, ..., 1) in x's dtype and device, so they broadcast against x."""
    return coef.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))


def _randn(shape, generator=None, device=None) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), so a seed gives the same noise
    whichever device the model runs on."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


class GaussianDiffusion:
    """The forward process q, the reverse process p_theta, the DDPM and DDIM samplers, and the training loss."""

    def __init__(self, num_timesteps: int = 1000, schedule: str = "cosine", predict: str = "eps",
                 loss_weighting: str = "none", snr_gamma: float = 5.0):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
        if predict not in PREDICTIONS:
            raise ValueError(f"unknown predict {predict!r}; expected one of {PREDICTIONS}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}; expected one of {LOSS_WEIGHTINGS}")
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        self.predict = predict
        self.loss_weighting = loss_weighting
        self.snr_gamma = snr_gamma

        betas = cosine_beta_schedule(num_timesteps) if schedule == "cosine" else linear_beta_schedule(num_timesteps)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.betas = betas  # (T,) all buffers are float64 on the CPU
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.alphas_cumprod_ext = torch.cat([torch.ones(1, dtype=torch.float64), abar])  # index t+1, t = -1..T-1

        # q(x_t | x_0) and its inversion x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        self.snr = abar / (1.0 - abar)  # SNR_t = abar_t / (1 - abar_t), signal over noise variance

        # q(x_{t-1} | x_t, x_0) has no buffers of its own: posterior_coefficients(t) computes it in float64.

    def _extract(self, a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """a[t] broadcast against x: (T,) buffer, (B,) timesteps -> (B, 1, ..., 1)."""
        return _broadcast(a[t.cpu()], x)

    # ------------------------------------------------------------------ forward process q
    def sample_timesteps(self, batch: int, device=None, generator=None) -> torch.Tensor:
        """t ~ Uniform{0, ..., T-1}, one per example."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device).to(device)

    def q_sample(self, x0, t, noise=None):
        """Sample from q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I)."""
        noise = torch.randn_like(x0) if noise is None else noise
        # BEGIN SOLUTION
        return self._extract(self.sqrt_alphas_cumprod, t, x0) * x0 + \
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        # END SOLUTION

    def posterior_coefficients(self, t):
        """The forward posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde_t I), with
        coef_x0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t),  coef_xt = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t),
        beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t.  (B,) timesteps -> three (B,) float64 tensors.

        Derivation (Bayes' rule): q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0), the
        product of N(x_t; sqrt(alpha_t) x_{t-1}, beta_t I) and N(x_{t-1}; sqrt(abar_{t-1}) x_0, (1 - abar_{t-1}) I).
        Both are Gaussians in x_{t-1}; completing the square,
            precision = alpha_t / beta_t + 1 / (1 - abar_{t-1}) = (1 - abar_t) / (beta_t (1 - abar_{t-1}))
            mean      = (sqrt(alpha_t) x_t / beta_t + sqrt(abar_{t-1}) x_0 / (1 - abar_{t-1})) / precision,
        which gives beta_tilde_t = 1 / precision and the two coefficients above."""
        t = t.cpu()
        beta, abar, abar_prev = self.betas[t], self.alphas_cumprod[t], self.alphas_cumprod_prev[t]  # (B,) each
        # BEGIN SOLUTION
        coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
        coef_xt = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
        beta_tilde = (1 - abar_prev) / (1 - abar) * beta
        # END SOLUTION
        return coef_x0, coef_xt, beta_tilde

    def q_posterior_mean_variance(self, x0, x_t, t):
        """The forward posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde_t I): mean, variance and log
        variance, each shaped like x_t. beta_tilde_0 = 0 has no log; the log is only used for t >= 1 (no noise is
        added at t = 0), so t = 0 reports log beta_tilde_1 (improved-diffusion's "clipped" log variance)."""
        coef_x0, coef_xt, variance = self.posterior_coefficients(t)
        mean = _broadcast(coef_x0, x_t) * x0 + _broadcast(coef_xt, x_t) * x_t
        log_variance = self.posterior_coefficients(t.clamp(min=1))[2].log()
        return mean, _broadcast(variance, x_t).expand_as(x_t), _broadcast(log_variance, x_t).expand_as(x_t)

    def predict_x0_from_eps(self, x_t, t, eps):
        """Invert q_sample for x_0: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - \
            self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_x0(self, x_t, t, x0):
        """Invert q_sample for eps: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / \
            self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def predict_x0_from_v(self, x_t, t, v):
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return self._extract(self.sqrt_alphas_cumprod, t, x_t) * x_t - \
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def v_target(self, x0, t, eps):
        """The v-prediction target: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
        return self._extract(self.sqrt_alphas_cumprod, t, x0) * eps - \
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def to_x0(self, x_t, t, out):
        """The model's output, whichever target it predicts, as a prediction of x_0."""
        if self.predict == "eps":
            return self.predict_x0_from_eps(x_t, t, out)
        return self.predict_x0_from_v(x_t, t, out) if self.predict == "v" else out

    def target(self, x0, t, eps):
        """What the model is trained to output for (x_0, t, eps): eps, x_0 or v."""
        if self.predict == "eps":
            return eps
        return self.v_target(x0, t, eps) if self.predict == "v" else x0

    def loss_weight(self, t) -> torch.Tensor:
        """Per-timestep weight of || target - f(x_t, t) ||^2, (B,) float64. "none": 1 (L_simple). "min_snr": Hang et
        al. 2023, min(SNR_t, gamma) in units of the x_0 error. At a fixed x_t the errors of the targets are
        ||d eps||^2 = SNR_t ||d x_0||^2 and ||d v||^2 = (SNR_t + 1) ||d x_0||^2, so the weight on the target's own
        error is min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x_0."""
        snr = self.snr[t.cpu()]
        if self.loss_weighting == "none":
            return torch.ones_like(snr)
        w = snr.clamp(max=self.snr_gamma)  # min(SNR_t, gamma)
        return w / snr if self.predict == "eps" else w / (snr + 1) if self.predict == "v" else w

    # ------------------------------------------------------------------ reverse process p_theta
    def _predict(self, model_fn, x_t, t, clip_x0=None):
        """Run the model and return (pred_x0, pred_eps), both consistent with x_t after clipping x_0."""
        out = model_fn(x_t, t)
        if out.shape != x_t.shape:
            raise ValueError(f"model_fn returned shape {tuple(out.shape)}, expected {tuple(x_t.shape)}")
        pred_x0 = self.to_x0(x_t, t, out)
        if clip_x0 is not None:
            pred_x0 = pred_x0.clamp(-clip_x0, clip_x0)
        if self.predict == "eps" and clip_x0 is None:
            pred_eps = out
        else:
            pred_eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        return pred_x0, pred_eps

    def p_mean_variance(self, model_fn, x_t, t, clip_x0: float | None = None) -> dict:
        """p_theta(x_{t-1} | x_t) = q(x_{t-1} | x_t, x_0 = x0_hat(x_t, t)): plug the model's guess of x_0 into the
        forward posterior. The variance is fixed to beta_tilde_t (DDPM's "small" choice)."""
        pred_x0, pred_eps = self._predict(model_fn, x_t, t, clip_x0)
        mean, variance, log_variance = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return dict(mean=mean, variance=variance, log_variance=log_variance, pred_x0=pred_x0, pred_eps=pred_eps)

    def p_sample(self, model_fn, x_t, t, clip_x0=None, generator=None) -> dict:
        """One ancestral step x_{t-1} = mu_theta(x_t, t) + sqrt(beta_tilde_t) z, z ~ N(0, I); no noise at t = 0."""
        out = self.p_mean_variance(model_fn, x_t, t, clip_x0)
        z = _randn(x_t.shape, generator, x_t.device).to(x_t.dtype)
        nonzero = _broadcast((t != 0).double(), x_t)  # (B, 1, ..., 1)
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * z
        return dict(sample=sample, pred_x0=out["pred_x0"])

    @torch.no_grad()
    def p_sample_loop(self, model_fn, shape, noise=None, clip_x0=None, generator=None, device=None,
                      progress=False) -> torch.Tensor:
        """DDPM sampling: x_T ~ N(0, I), then T ancestral steps down to x_0."""
        x = _randn(shape, generator, device) if noise is None else noise
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="DDPM"):
            t = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
            x = self.p_sample(model_fn, x, t, clip_x0, generator)["sample"]
        return x

    # ------------------------------------------------------------------ DDIM
    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` evenly strided timesteps from T-1 down to 0, descending (unCLIP samples its prior with 64)."""
        T = self.num_timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in 1..{T} (num_timesteps), got {steps}")
        if steps == 1:
            return [T - 1]
        return [i * (T - 1) // (steps - 1) for i in range(steps)][::-1]

    def ddim_sample(self, model_fn, x_t, t, t_prev, eta=0.0, clip_x0=None, generator=None) -> dict:
        """One DDIM step t -> t_prev < t (t_prev = -1 means x_0, abar_{-1} = 1):
            x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
            sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        eta = 0 is deterministic; eta = 1 with t_prev = t-1 has DDPM's variance beta_tilde_t."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        t_prev = torch.as_tensor(t_prev, dtype=torch.long).expand(t.shape[0])  # int or (B,)
        pred_x0, pred_eps = self._predict(model_fn, x_t, t, clip_x0)
        abar = self.alphas_cumprod_ext[t.cpu() + 1]  # (B,) float64
        abar_prev = self.alphas_cumprod_ext[t_prev.cpu() + 1]
        # BEGIN SOLUTION
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        dir_coef = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt()
        sample = _broadcast(abar_prev.sqrt(), x_t) * pred_x0 + _broadcast(dir_coef, x_t) * pred_eps
        # END SOLUTION
        if eta > 0:
            z = _randn(x_t.shape, generator, x_t.device).to(x_t.dtype)
            sample = sample + _broadcast(sigma, x_t) * z
        return dict(sample=sample, pred_x0=pred_x0)

    @torch.no_grad()
    def ddim_sample_loop(self, model_fn, shape, steps=50, eta=0.0, noise=None, clip_x0=None, generator=None,
                         device=None, progress=False, return_trajectory=False):
        """DDIM sampling over ddim_timesteps(steps), ending with a step to t = -1 (x_0).
        Returns x_0, or (x_0, [pred_x0 at each step]) when return_trajectory."""
        timesteps = self.ddim_timesteps(steps)
        x = _randn(shape, generator, device) if noise is None else noise
        trajectory = []
        for i, t_cur in enumerate(tqdm(timesteps, disable=not progress, desc="DDIM")):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            t = torch.full((shape[0],), t_cur, dtype=torch.long, device=x.device)
            out = self.ddim_sample(model_fn, x, t, t_prev, eta, clip_x0, generator)
            x = out["sample"]
            trajectory.append(out["pred_x0"])
        return (x, trajectory) if return_trajectory else x

    def ddim_reverse_sample(self, model_fn, x_t, t, t_next, clip_x0=None) -> dict:
        """One deterministic DDIM step *up* the chain, t -> t_next > t (inversion, eta = 0):
            x_{t_next} = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps_hat, predictions made at (x_t, t).
        t = -1 means x_t is clean data: x0_hat = x_t, and eps_hat is asked of the model at t = 0."""
        t_next = torch.as_tensor(t_next, dtype=torch.long).expand(t.shape[0])
        pred_x0, pred_eps = self._predict(model_fn, x_t, t.clamp(min=0), clip_x0)
        is_data = (t < 0).to(x_t.device).view(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, ..., 1)
        pred_x0 = torch.where(is_data, x_t, pred_x0)
        abar_next = self.alphas_cumprod_ext[t_next.cpu() + 1]
        sample = _broadcast(abar_next.sqrt(), x_t) * pred_x0 + _broadcast((1 - abar_next).sqrt(), x_t) * pred_eps
        return dict(sample=sample, pred_x0=pred_x0)

    @torch.no_grad()
    def ddim_reverse_sample_loop(self, model_fn, x0, steps=50, clip_x0=None, progress=False) -> torch.Tensor:
        """DDIM inversion: run the eta = 0 sampler backwards from a real x_0 to the x_T that
        ddim_sample_loop(steps=steps, noise=x_T) maps back to (nearly) x_0. unCLIP uses it for variations."""
        timesteps = [-1] + self.ddim_timesteps(steps)[::-1]  # ascending: -1 (data), 0, ..., T-1
        x = x0
        for t_cur, t_next in tqdm(list(zip(timesteps[:-1], timesteps[1:])), disable=not progress, desc="DDIM inv"):
            t = torch.full((x0.shape[0],), t_cur, dtype=torch.long, device=x0.device)
            x = self.ddim_reverse_sample(model_fn, x, t, t_next, clip_x0)["sample"]
        return x

    # ------------------------------------------------------------------ training
    def training_loss(self, model_fn, x0, t=None, noise=None) -> dict:
        """L = E_{t, x_0, eps} w_t || target - f_theta(x_t, t) ||^2, target = eps, x_0 or v (per self.predict),
        w_t = loss_weight(t) (1 for L_simple). The unCLIP prior predicts x_0 = z_i directly:
        L_prior = E_t || f(z_i^(t), t, y) - z_i ||^2."""
        B = x0.shape[0]
        t = self.sample_timesteps(B, device=x0.device) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        target = self.target(x0, t, noise)
        per_example = ((model_fn(x_t, t) - target) ** 2).reshape(B, -1).mean(dim=1)  # (B,)
        if self.loss_weighting != "none":
            per_example = per_example * self.loss_weight(t).to(per_example)
        return dict(loss=per_example.mean(), per_example=per_example, x_t=x_t, t=t)
