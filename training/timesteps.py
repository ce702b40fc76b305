"""Training σ samplers; the default is ltx-trainer's stretched, shifted logit-normal.

``shifted_logit_normal`` follows ``ShiftedLogitNormalTimestepSampler`` of ltx-trainer (Lightricks/LTX-2,
``packages/ltx-trainer/src/ltx_trainer/timestep_samplers.py``, read at commit 400fd31): for a clip of ``n`` latent
tokens (frames × height × width of the latent grid, what ltx-trainer's ``seq_length`` counts for LTX-2's patch size 1)

1. μ(n) is linear through (1024 tokens, 0.95) and (4096 tokens, 2.05), extrapolated beyond both ends (ltx-trainer
   does not clamp it);
2. x = sigmoid(μ + std·z), z ~ N(0, 1), std = 1;
3. stretch: r = (x − a) / (b − a) with a = sigmoid(μ − 2.5758·std), b = sigmoid(μ + 3.0902·std) (the 0.5th and
   99.9th percentiles), reflect r < eps to 2·eps − r (eps = 1e-3), clamp to [0, 1];
4. with probability 0.1 replace σ by eps + (1 − eps)·U(0, 1).

``logit_normal`` (σ = sigmoid(N(0, 1))) and ``uniform`` (σ ~ U(0, 1)) are remapped by a fixed shift s,
σ' = sσ / (1 + (s − 1)σ), and clamped to [1e-3, 1].
"""

from __future__ import annotations

import math

import torch

LTX_MIN_TOKENS = 1024
LTX_MAX_TOKENS = 4096
LTX_MIN_SHIFT = 0.95
LTX_MAX_SHIFT = 2.05
LTX_STD = 1.0
LTX_EPS = 1e-3
LTX_UNIFORM_PROB = 0.1
LTX_UPPER_Z = 3.0902
LTX_LOWER_Z = -2.5758
SIGMA_MIN = 1e-3


def ltx_shift(tokens: int) -> float:
    """ltx-trainer's logit-normal mean μ for a clip of `tokens` latent tokens (linear, not clamped)."""
    slope = (LTX_MAX_SHIFT - LTX_MIN_SHIFT) / (LTX_MAX_TOKENS - LTX_MIN_TOKENS)
    intercept = LTX_MIN_SHIFT - slope * LTX_MIN_TOKENS
    return slope * tokens + intercept


def ltx_stretch_bounds(mu: float) -> tuple[float, float]:
    """(a, b): the logit-normal's 0.5th and 99.9th percentiles that the stretch maps to 0 and 1."""
    lower = torch.sigmoid(torch.tensor(mu + LTX_LOWER_Z * LTX_STD))
    upper = torch.sigmoid(torch.tensor(mu + LTX_UPPER_Z * LTX_STD))
    return float(lower), float(upper)


def ltx_sigma_cdf(x: float, tokens: int) -> float:
    """P(σ ≤ x) of the ltx-trainer sampler for `tokens` tokens (analytic; what the tests compare samples with)."""
    if x < LTX_EPS:
        return 0.0
    if x >= 1.0:
        return 1.0
    mu = ltx_shift(tokens)
    a, b = ltx_stretch_bounds(mu)

    def below(r: float) -> float:
        """P(stretched value r' ≤ r) = Φ((logit(a + r(b − a)) − μ) / std)."""
        p = a + r * (b - a)
        if p <= 0.0:
            return 0.0
        if p >= 1.0:
            return 1.0
        z = (math.log(p / (1 - p)) - mu) / LTX_STD
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    # the reflection folds r < eps onto 2·eps − r, so σ ≤ x ⇔ 2·eps − x ≤ r ≤ x
    stretched = below(x) - below(2 * LTX_EPS - x)
    uniform = (x - LTX_EPS) / (1 - LTX_EPS)
    return (1 - LTX_UNIFORM_PROB) * stretched + LTX_UNIFORM_PROB * uniform


def _ltx_sigma(g: torch.Generator, tokens: int, count: int) -> torch.Tensor:
    """`count` σ of ltx-trainer's ShiftedLogitNormalTimestepSampler (its draws in its order: z, uniform, choice)."""
    mu = ltx_shift(tokens)
    x = torch.sigmoid(torch.randn((count,), generator=g) * LTX_STD + mu)
    lower = torch.sigmoid(torch.tensor(mu + LTX_LOWER_Z * LTX_STD))
    upper = torch.sigmoid(torch.tensor(mu + LTX_UPPER_Z * LTX_STD))
    raw = (x - lower) / (upper - lower)
    stretched = torch.where(raw >= LTX_EPS, raw, 2 * LTX_EPS - raw).clamp(0, 1)
    uniform = (1 - LTX_EPS) * torch.rand((count,), generator=g) + LTX_EPS
    choice = torch.rand((count,), generator=g)
    return torch.where(choice > LTX_UNIFORM_PROB, stretched, uniform)


def sample_sigma(g: torch.Generator, kind: str, shift: float = 1.0, tokens: int | None = None,
                 count: int = 1) -> torch.Tensor:
    """`count` training σ (shape [count]) from generator `g`; `tokens` (the clip's latent token count) drives the
    ``shifted_logit_normal`` shift, `shift` the fixed remap of ``logit_normal``/``uniform``."""
    if kind == "shifted_logit_normal":
        if tokens is None or tokens < 1:
            raise ValueError(f"shifted_logit_normal σ sampling needs the clip's latent token count, got {tokens}")
        return _ltx_sigma(g, tokens, count)
    if kind == "logit_normal":
        u = torch.sigmoid(torch.randn((count,), generator=g))
    elif kind == "uniform":
        u = torch.rand((count,), generator=g)
    else:
        raise ValueError(f"unknown timestep sampling {kind!r}; use shifted_logit_normal, logit_normal or uniform")
    s = shift * u / (1 + (shift - 1) * u)
    return s.clamp(SIGMA_MIN, 1.0)
