"""LTX-2's σ schedule against its two references, ltx-core's `LTX2Scheduler` and diffusers' LTX2Pipeline schedule.

Both references evaluate the schedule in float32. Their error is a few roundings of σ near 1 (≤ 6·2⁻²⁴ in 1 − σ,
counting the time shift's division and sum and the rounding of 1/t − 1), which the terminal stretch divides by the last
step's 1 − σ and multiplies by 1 − terminal; the tolerance is that bound, and at least 1e-6. Up to 6144 tokens it is
about 1e-6 (measured: ≤ 2.4e-7 from both); at 40000 tokens the last 1 − σ is ~1e-5 and the references are off by up to
2e-2 (and repeat σ values), which the bound covers and our float64 evaluation does not share.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.ltx2 import utils as ltx2_utils
from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift
from ltx_core.components.schedulers import LTX2Scheduler

from editctrl_core.edit.schedules import (
    DEFAULT_TOKENS,
    DISTILLED_SIGMAS,
    SIGMA_END_TOLERANCE,
    STAGE_2_DISTILLED_SIGMAS,
    check_sigmas,
    ltx2_sigmas,
)

EPS32 = 2.0 ** -24
TOKENS = (256, 1024, 2048, 6144, 40000)
STEPS = (8, 20, 30, 40)
# LTX-2's diffusers scheduler config (scheduler/scheduler_config.json of the Lightricks/LTX-2 folders)
LTX2_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                      base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1,
                      time_shift_type="exponential")


def _core(steps: int, tokens: int, **kwargs: object) -> torch.Tensor:
    """ltx-core's schedule for a latent of `tokens` tokens (it counts the latent's f·h·w)."""
    return LTX2Scheduler().execute(steps=steps, latent=torch.empty(1, 1, tokens, 1, 1), **kwargs)


def _diffusers(steps: int, tokens: int) -> torch.Tensor:
    """The schedule LTX2Pipeline builds: its default sigmas through the scheduler with mu from the sequence length."""
    scheduler = FlowMatchEulerDiscreteScheduler(**LTX2_SCHEDULER)
    mu = calculate_shift(tokens, LTX2_SCHEDULER["base_image_seq_len"], LTX2_SCHEDULER["max_image_seq_len"],
                         LTX2_SCHEDULER["base_shift"], LTX2_SCHEDULER["max_shift"])
    with np.errstate(divide="ignore", invalid="ignore"):
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=mu)
    return scheduler.sigmas


def _float32_tolerance(steps: int, tokens: int, base_shift: float = 0.95, max_shift: float = 2.05,
                       terminal: float = 0.1, strength: float = 1.0) -> float:
    """Bound on a float32 evaluation's error (module docstring), from the exact last unstretched 1 − σ."""
    mu = base_shift + (max_shift - base_shift) * (tokens - 1024) / (4096 - 1024)
    odds = steps / strength - 1.0  # 1/t − 1 at the last t > 0
    one_minus_last = odds / (odds + math.exp(mu))
    return max(1e-6, 6 * EPS32 * (1 - terminal) / one_minus_last + 2 * EPS32)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_matches_ltx_core_scheduler(tokens: int, steps: int) -> None:
    ours = ltx2_sigmas(steps, tokens)
    assert ours.dtype == torch.float32 and ours.shape == (steps + 1,)
    assert ours[0] == 1.0 and ours[-1] == 0.0 and ours[-2] == torch.tensor(0.1)
    torch.testing.assert_close(ours, _core(steps, tokens), rtol=0, atol=_float32_tolerance(steps, tokens))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_matches_diffusers_ltx2_pipeline_schedule(tokens: int, steps: int) -> None:
    torch.testing.assert_close(ltx2_sigmas(steps, tokens), _diffusers(steps, tokens), rtol=0,
                               atol=_float32_tolerance(steps, tokens))


def test_well_conditioned_token_counts_agree_to_1e6() -> None:
    """Where float32 holds (LTX-2's usual sizes) both references agree with us, and each other, within 1e-6."""
    for tokens in TOKENS[:-1]:
        for steps in STEPS:
            ours, core, diffusers = ltx2_sigmas(steps, tokens), _core(steps, tokens), _diffusers(steps, tokens)
            assert (ours - core).abs().max() <= 1e-6 and (ours - diffusers).abs().max() <= 1e-6, (tokens, steps)


def test_one_step_is_noise_to_clean() -> None:
    """One step: both references divide 0 by 0 in the stretch (NaN); the schedule is [1, 0]."""
    for tokens in TOKENS:
        assert torch.isnan(_core(1, tokens)[0]) and torch.isnan(_diffusers(1, tokens)[0])
        assert torch.equal(ltx2_sigmas(1, tokens), torch.tensor([1.0, 0.0]))


def test_large_token_counts_stay_strictly_decreasing() -> None:
    """In float32 ltx-core's σ near 1 round to repeats (zero-length steps) at 40000 tokens and to NaN at 130000;
    evaluated in log space the schedule decreases strictly and tends to its infinite-shift limit
    1 − (1 − terminal)·(1/t − 1)/(1/t_last − 1)."""
    core = _core(40, 40000)
    assert int((core[1:] == core[:-1]).sum()) > 0
    for tokens in (40000, 130000):
        ours = ltx2_sigmas(40, tokens)
        assert bool((ours[1:] < ours[:-1]).all())
    assert torch.isnan(_core(40, 130000)).any()
    t = torch.linspace(1.0, 0.0, 41, dtype=torch.float64)[:-1]
    limit = torch.cat([1 - 0.9 * (1 / t - 1) / (1 / t[-1] - 1), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(ltx2_sigmas(40, 130000), limit.float(), rtol=0, atol=2 * EPS32)


@pytest.mark.parametrize("strength", [0.5, 0.25])
@pytest.mark.parametrize("tokens", [1024, 6144])
def test_strength_is_the_tail_of_the_longer_schedule(tokens: int, strength: float) -> None:
    steps = 8
    longer = round(steps / strength)
    ours = ltx2_sigmas(steps, tokens, strength=strength)
    torch.testing.assert_close(ours, ltx2_sigmas(longer, tokens)[-(steps + 1):], rtol=0, atol=2 * EPS32)
    torch.testing.assert_close(ours, _core(longer, tokens)[-(steps + 1):], rtol=0,
                               atol=_float32_tolerance(longer, tokens))
    assert torch.equal(ltx2_sigmas(1, tokens, strength=strength), torch.tensor([0.1, 0.0]))


@pytest.mark.parametrize("options", [dict(stretch=False), dict(terminal=0.05), dict(base_shift=0.5, max_shift=1.15)])
def test_options_match_ltx_core(options: dict) -> None:
    for tokens in (512, 3000):
        want = _core(30, tokens, **options)
        shift = {k: options[k] for k in ("base_shift", "max_shift") if k in options}
        tol = _float32_tolerance(30, tokens, terminal=options.get("terminal", 0.1), **shift)
        torch.testing.assert_close(ltx2_sigmas(30, tokens, **options), want, rtol=0, atol=tol)


def test_default_token_count_is_ltx_pipelines_default() -> None:
    """ltx-pipelines call the scheduler without a latent: 4096 tokens (μ = 2.05) whatever the resolution."""
    assert DEFAULT_TOKENS == 4096
    torch.testing.assert_close(ltx2_sigmas(30, None), LTX2Scheduler().execute(steps=30), rtol=0, atol=1e-6)


def test_distilled_lists_are_the_official_ones() -> None:
    """ltx-pipelines' constants (diffusers copies them without the final 0, which its scheduler appends)."""
    assert DISTILLED_SIGMAS == (*ltx2_utils.DISTILLED_SIGMA_VALUES, 0.0)
    assert STAGE_2_DISTILLED_SIGMAS == (*ltx2_utils.STAGE_2_DISTILLED_SIGMA_VALUES, 0.0)
    assert torch.equal(check_sigmas(DISTILLED_SIGMAS, 8), torch.tensor(DISTILLED_SIGMAS))
    assert torch.equal(check_sigmas(STAGE_2_DISTILLED_SIGMAS, 3), torch.tensor(STAGE_2_DISTILLED_SIGMAS))


def test_check_sigmas_accepts_schedules() -> None:
    for steps in (1, 8, 30):
        sigmas = ltx2_sigmas(steps, 6144)
        assert torch.equal(check_sigmas(sigmas, steps), sigmas)
    assert check_sigmas([1.0, 1.0, 0.5, 0.0]).dtype == torch.float32  # equal neighbours: a zero-length step
    assert check_sigmas(torch.tensor([0.8, 0.3, SIGMA_END_TOLERANCE], dtype=torch.float64), 2).dtype == torch.float32


@pytest.mark.parametrize(("sigmas", "steps", "message"), [
    ([[1.0, 0.0]], None, r"1-D list of σ values; got shape \(1, 2\)"),
    ([1.0], None, "at least 2 values"),
    ([1.0, 0.5, 0.0], 3, r"3 values but 3 steps need 4 \(steps \+ 1\); set steps to 2 or give 4 values"),
    ([1.0, float("nan"), 0.0], None, r"finite; σ\[1\] is nan"),
    ([float("inf"), 0.5, 0.0], None, r"finite; σ\[0\] is inf"),
    ([1.5, 0.5, 0.0], None, r"\[0, 1\] \(σ = 1 is pure noise\); σ\[0\] is 1.5"),
    ([1.0, 0.5, -0.01], None, r"\[0, 1\].*σ\[2\] is -0.01"),
    ([1.0, 0.4, 0.5, 0.0], None, r"must not increase: σ\[2\] = 0.5 > σ\[1\] = 0.4"),
    ([1.0, 0.5, 0.1], None, "must end at 0 .*the last value is 0.1: append 0"),
])
def test_check_sigmas_names_the_problem(sigmas: list, steps: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_sigmas(sigmas, steps)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(steps=0), "steps must be a whole number >= 1"),
    (dict(steps=2.5), "steps must be a whole number >= 1"),
    (dict(num_tokens=0), "num_tokens must be a whole number >= 1"),
    (dict(strength=0.0), r"strength must be in \(0, 1\]"),
    (dict(strength=1.5), r"strength must be in \(0, 1\]"),
    (dict(terminal=0.0), r"terminal must be in \(0, 1\)"),
    (dict(terminal=1.0), r"terminal must be in \(0, 1\)"),
    (dict(max_shift=float("inf")), "must be finite"),
])
def test_schedule_arguments_are_checked(kwargs: dict, message: str) -> None:
    args = dict(steps=8, num_tokens=1024)
    args.update(kwargs)
    steps, tokens = args.pop("steps"), args.pop("num_tokens")
    with pytest.raises(ValueError, match=message):
        ltx2_sigmas(steps, tokens, **args)


def test_the_nodes_sigma_text_reads_back_exactly() -> None:
    """The sampler node lists the σ it ran as the shortest decimals that read back as the same float32 values."""
    from editctrl_core.edit.schedules import describe_sigmas

    for sigmas in (ltx2_sigmas(8, 6144), ltx2_sigmas(3, 12, base_shift=0.5, max_shift=3.0, terminal=0.2),
                   torch.tensor(DISTILLED_SIGMAS)):
        text = describe_sigmas(sigmas)
        assert torch.equal(torch.tensor([float(v) for v in text.split(", ")]), sigmas), text
    assert describe_sigmas(torch.tensor(DISTILLED_SIGMAS)) == "1, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, " \
                                                              "0.725, 0.421875, 0"
    long = describe_sigmas(ltx2_sigmas(30, 6144))
    assert long.count(", ") == 8 and ", …, " in long and long.endswith(", 0.1, 0")
