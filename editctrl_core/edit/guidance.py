"""Classifier-free guidance as LTX-2's official pipelines apply it: on the denoised prediction, with its rescale.

ltx-core's guider mixes the denoised (x0) predictions, ``pred = cond + (cfg − 1)(cond − uncond)``, then, with
``rescale_scale`` r, multiplies by ``r·std(cond)/std(pred) + (1 − r)`` (std over the whole prediction) so strong
guidance does not inflate the latents' variance. The sampler works in velocities (x0 = x − σ·v), so it converts,
guides and converts back; at r = 0 this is plain CFG on the velocities.
"""

from __future__ import annotations

import torch

#: LTX-2 / 2.3's official video guidance (ltx-pipelines: cfg_scale 3.0, rescale_scale 0.7).
DEFAULT_CFG = 3.0
DEFAULT_RESCALE = 0.7


def guide_denoised(cond: torch.Tensor, uncond: torch.Tensor, cfg: float, rescale: float = 0.0) -> torch.Tensor:
    """Guided denoised prediction from the conditional and unconditional ones (ltx-core's formula)."""
    pred = cond + (cfg - 1.0) * (cond - uncond)
    if rescale != 0.0:
        factor = cond.std() / pred.std()
        pred = pred * (rescale * factor + (1.0 - rescale))
    return pred


def guide_velocity(cond: torch.Tensor, uncond: torch.Tensor, x: torch.Tensor, sigma: float, cfg: float,
                   rescale: float = 0.0) -> torch.Tensor:
    """Guided velocity at noisy latents x and σ > 0: guidance applied to x0 = x − σ·v, as the official pipelines."""
    if rescale == 0.0:
        return uncond + cfg * (cond - uncond)
    denoised = guide_denoised(x - sigma * cond, x - sigma * uncond, cfg, rescale)
    return (x - denoised) / sigma
