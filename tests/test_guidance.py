"""CFG as LTX-2's official pipelines apply it (ltx-core's guider is the oracle): on the denoised prediction, with
the 0.7 rescale; and the sampler's schedules (LTX-2's own by default, the distilled list, a SIGMAS input)."""

from __future__ import annotations

import pytest
import torch
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderParams

from editctrl_core.edit.guidance import DEFAULT_CFG, DEFAULT_RESCALE, guide_denoised, guide_velocity
from editctrl_core.edit.sampler import SamplerSettings, edit_sigmas, flow_sigmas
from editctrl_core.edit.schedules import DISTILLED_SIGMAS, ltx2_sigmas


def test_defaults_are_the_official_video_guidance():
    assert (DEFAULT_CFG, DEFAULT_RESCALE) == (3.0, 0.7)
    settings = SamplerSettings()
    assert (settings.cfg, settings.guidance_rescale, settings.steps, settings.scheduler) == (3.0, 0.7, 30, "ltx2")


@pytest.mark.parametrize("cfg,rescale", [(3.0, 0.7), (4.0, 0.0), (7.0, 1.0), (1.0, 0.7)])
def test_guided_denoised_equals_ltx_core(cfg, rescale):
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 40, 16, generator=gen), torch.randn(1, 40, 16, generator=gen)
    oracle = MultiModalGuider(MultiModalGuiderParams(cfg_scale=cfg, rescale_scale=rescale))
    ref = oracle.calculate(cond, uncond, 0.0, 0.0)
    torch.testing.assert_close(guide_denoised(cond, uncond, cfg, rescale), ref, atol=1e-6, rtol=1e-6)


def test_guided_velocity_is_the_guided_denoised_in_velocity_form():
    gen = torch.Generator().manual_seed(1)
    x, v_cond, v_uncond = (torch.randn(1, 30, 8, generator=gen) for _ in range(3))
    sigma = 0.6
    v = guide_velocity(v_cond, v_uncond, x, sigma, 3.0, 0.7)
    denoised = guide_denoised(x - sigma * v_cond, x - sigma * v_uncond, 3.0, 0.7)
    torch.testing.assert_close(x - sigma * v, denoised, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(guide_velocity(v_cond, v_uncond, x, sigma, 3.0, 0.0),
                               v_uncond + 3.0 * (v_cond - v_uncond))


def test_schedules_of_an_edit():
    assert torch.equal(edit_sigmas(SamplerSettings(steps=20), 6144), ltx2_sigmas(20, 6144))
    assert torch.equal(edit_sigmas(SamplerSettings(steps=8, scheduler="distilled"), 6144),
                       torch.tensor(DISTILLED_SIGMAS))
    assert torch.equal(edit_sigmas(SamplerSettings(steps=4, scheduler="linear", shift=3.0), 10), flow_sigmas(4, 3.0))
    given = torch.tensor([1.0, 0.5, 0.2, 0.0])
    assert torch.equal(edit_sigmas(SamplerSettings(steps=3, sigmas=given), 10), given)


@pytest.mark.parametrize("changes,message", [
    ({"steps": 4, "sigmas": torch.tensor([1.0, 0.5, 0.0])}, "SIGMAS has 3 values but 4 steps need 5"),
    ({"steps": 2, "sigmas": torch.tensor([1.0, 0.5, 0.0]), "strength": 0.5}, "with SIGMAS, start the list"),
    ({"steps": 2, "sigmas": torch.tensor([1.0, float("nan"), 0.0])}, "must be finite"),
    ({"steps": 20, "scheduler": "distilled"}, "the distilled schedule has 8 steps; set steps to 8"),
    ({"scheduler": "karras"}, "scheduler must be one of ltx2, distilled, linear"),
    ({"guidance_rescale": 1.5}, "guidance_rescale must be in"),
    ({"guidance_rescale": float("nan")}, "guidance_rescale is nan"),
])
def test_bad_schedules_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**changes).validate()
