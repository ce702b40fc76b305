"""Training σ: ltx-trainer's shifted logit-normal sampler (token-count shift, stretch, uniform share) by default.

Samples are compared with the analytic CDF by the Kolmogorov–Smirnov distance D = sup |F_n − F|. For n independent
draws of any distribution the Dvoretzky–Kiefer–Wolfowitz inequality (Massart's constant) gives
P(D > ε) ≤ 2·exp(−2nε²), so ε = sqrt(ln(2/α) / 2n) is exceeded by a correct sampler with probability ≤ α. The draws are
seeded (the test is deterministic); α = 1e-6 says how unlucky that seed would have to be for a correct sampler.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from training_support import tiny_config

from training.config import ConfigError
from training.timesteps import (
    LTX_EPS,
    LTX_MAX_SHIFT,
    LTX_MAX_TOKENS,
    LTX_MIN_SHIFT,
    LTX_MIN_TOKENS,
    ltx_shift,
    ltx_sigma_cdf,
    sample_sigma,
)

N = 20_000
ALPHA = 1e-6
EPSILON = math.sqrt(math.log(2 / ALPHA) / (2 * N))  # 0.0190 for n = 20000


def _draws(kind: str, tokens: int | None, shift: float = 1.0, seed: int = 0) -> np.ndarray:
    """N σ from one seeded generator (the training loop asks for one per sample; the draws are the same kind)."""
    g = torch.Generator().manual_seed(seed)
    return sample_sigma(g, kind, shift, tokens, count=N).double().numpy()


def _ks(samples: np.ndarray, cdf) -> float:
    """sup |F_n − F|, exact for a sorted sample: max over i of i/n − F(x_i) and F(x_i−) − (i−1)/n (F may jump)."""
    x = np.sort(samples)
    n = len(x)
    upper = np.array([cdf(v) for v in x])
    lower = np.array([cdf(np.nextafter(v, -np.inf)) for v in x])
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - upper), np.max(lower - (i - 1) / n)))


def test_the_training_call_gives_one_sigma_and_needs_the_token_count() -> None:
    one = sample_sigma(torch.Generator().manual_seed(5), "shifted_logit_normal", tokens=18)
    assert one.shape == (1,) and LTX_EPS <= float(one) <= 1.0
    with pytest.raises(ValueError, match="needs the clip's latent token count"):
        sample_sigma(torch.Generator(), "shifted_logit_normal")


def test_shift_is_ltx_trainers_line_through_its_end_points() -> None:
    # double-precision arithmetic on three terms: exact to ~1e-15
    assert ltx_shift(LTX_MIN_TOKENS) == pytest.approx(LTX_MIN_SHIFT, abs=1e-12)
    assert ltx_shift(LTX_MAX_TOKENS) == pytest.approx(LTX_MAX_SHIFT, abs=1e-12)
    assert ltx_shift(2 * LTX_MAX_TOKENS) > LTX_MAX_SHIFT, "ltx-trainer extrapolates the shift, it does not clamp it"


@pytest.mark.parametrize("tokens", [1024, 6144])
def test_samples_follow_the_analytic_distribution(tokens: int) -> None:
    samples = _draws("shifted_logit_normal", tokens)
    assert samples.min() >= LTX_EPS and samples.max() <= 1.0
    distance = _ks(samples, lambda v: ltx_sigma_cdf(float(v), tokens))
    assert distance < EPSILON, (tokens, distance, EPSILON)


def test_the_token_count_moves_the_distribution() -> None:
    """The two token counts are told apart: each sample is farther than ε from the other count's CDF."""
    few, many = _draws("shifted_logit_normal", 1024), _draws("shifted_logit_normal", 6144, seed=1)
    assert _ks(few, lambda v: ltx_sigma_cdf(float(v), 6144)) > 5 * EPSILON
    assert _ks(many, lambda v: ltx_sigma_cdf(float(v), 1024)) > 5 * EPSILON
    assert np.median(many) > np.median(few), "more tokens, more noise"


def test_fixed_shift_modes() -> None:
    """logit_normal and uniform, remapped by s and clamped to [1e-3, 1]: for x ≥ 1e-3, σ ≤ x ⇔ u ≤ x/(s − (s − 1)x)."""
    s = 3.0

    def u_cdf(kind: str, v: float) -> float:
        x = float(v)
        if x < 1e-3:
            return 0.0
        if x >= 1.0:
            return 1.0
        u = x / (s - (s - 1) * x)
        return 0.5 * (1 + math.erf(math.log(u / (1 - u)) / math.sqrt(2))) if kind == "logit_normal" else u

    for kind in ("logit_normal", "uniform"):
        assert _ks(_draws(kind, None, s), lambda v, k=kind: u_cdf(k, v)) < EPSILON, kind


def test_config_refuses_a_fixed_shift_with_the_ltx_sampler(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^train\.timestep_shift: does not apply to timestep_sampling "
                                          r"shifted_logit_normal"):
        tiny_config(tmp_path, ["train.timestep_shift=3.0"])
    cfg = tiny_config(tmp_path, ["train.timestep_sampling=logit_normal", "train.timestep_shift=3.0"])
    assert cfg.train.timestep_sampling == "logit_normal"
    with pytest.raises(ConfigError, match=r"^train\.timestep_sampling: 'sd3' is not one of"):
        tiny_config(tmp_path, ["train.timestep_sampling=sd3"])
