"""LTX-2's σ schedules: its own token-count-shifted, terminal-stretched schedule and the distilled checkpoints' lists.

The schedule is ltx-core's ``LTX2Scheduler`` (diffusers' ``LTX2Pipeline`` computes the same one through
``FlowMatchEulerDiscreteScheduler`` with ``use_dynamic_shifting``, ``time_shift_type="exponential"`` and
``shift_terminal=0.1``): t runs linearly from 1 to 0; each t > 0 is time-shifted to σ = e^μ / (e^μ + 1/t − 1), μ
linear in the number of video latent tokens (0.95 at 1024 tokens, 2.05 at 4096, extrapolated beyond); then 1 − σ is
scaled so that the last σ > 0 is the terminal value 0.1. Both references evaluate it in float32, where σ close to 1
cancels: above ~10k tokens their values carry errors up to 1e-2 and repeat (zero-length steps), and for one step
(or ~100k tokens) the stretch divides 0 by 0. Here it is evaluated in log space in float64, so it agrees with them
to float32 rounding wherever their arithmetic holds, and stays exact and strictly decreasing where it does not.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BASE_SHIFT_TOKENS = 1024
MAX_SHIFT_TOKENS = 4096
BASE_SHIFT = 0.95
MAX_SHIFT = 2.05
TERMINAL = 0.1
#: The token count ltx-pipelines' schedulers assume when given no latent (all but the HQ pipeline), i.e. μ = 2.05.
DEFAULT_TOKENS = MAX_SHIFT_TOKENS

#: σ list of the distilled LTX-2 and LTX-2.3 checkpoints (8 steps), from ltx-pipelines' ``DISTILLED_SIGMA_VALUES``.
DISTILLED_SIGMAS: tuple[float, ...] = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)
#: The distilled refinement (stage-2, super-resolution) list: 3 steps from 0.909375.
STAGE_2_DISTILLED_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875, 0.0)

#: The largest last σ a user-given schedule may end on (its residual noise is below the latents' precision).
SIGMA_END_TOLERANCE = 1e-3


def shift_mu(num_tokens: int, base_shift: float = BASE_SHIFT, max_shift: float = MAX_SHIFT) -> float:
    """Time-shift exponent μ for a token count: base_shift at 1024 tokens, max_shift at 4096, linear (as ltx-core)."""
    slope = (max_shift - base_shift) / (MAX_SHIFT_TOKENS - BASE_SHIFT_TOKENS)
    return num_tokens * slope + (base_shift - slope * BASE_SHIFT_TOKENS)


def ltx2_sigmas(steps: int, num_tokens: int | None, *, base_shift: float = BASE_SHIFT, max_shift: float = MAX_SHIFT,
                stretch: bool = True, terminal: float = TERMINAL, strength: float = 1.0) -> torch.Tensor:
    """LTX-2's σ schedule: steps+1 float32 values from σ(strength) down to 0 (see the module docstring).

    `num_tokens`: video latent tokens f·h·w of the clip (None: 4096, what ltx-pipelines use). `strength` < 1 starts t
    at `strength` instead of 1, which is the tail of the steps/strength-step schedule (exactly, when that is whole).
    One step at strength 1 is [1, 0]: its only σ > 0 is 1, which no stretch can move (ltx-core returns NaN there).
    """
    _check_schedule_args(steps, num_tokens, base_shift, max_shift, terminal, strength)
    mu = shift_mu(DEFAULT_TOKENS if num_tokens is None else num_tokens, base_shift, max_shift)
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1] * strength
    log_one_minus = F.logsigmoid(torch.log(1.0 / t - 1.0) - mu)
    if stretch and math.isfinite(float(log_one_minus[-1])):
        log_one_minus = log_one_minus - log_one_minus[-1] + math.log1p(-terminal)
    sigmas = -torch.expm1(log_one_minus)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def _check_schedule_args(steps: int, num_tokens: int | None, base_shift: float, max_shift: float, terminal: float,
                         strength: float) -> None:
    """Reject arguments for which the schedule is undefined, naming the argument."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1; got {steps!r}")
    if num_tokens is not None and (isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1):
        raise ValueError(f"num_tokens must be a whole number >= 1 (video latent tokens f·h·w); got {num_tokens!r}")
    if not (math.isfinite(base_shift) and math.isfinite(max_shift)):
        raise ValueError(f"base_shift and max_shift must be finite; got {base_shift}, {max_shift}")
    if not 0.0 < terminal < 1.0:
        raise ValueError(f"terminal must be in (0, 1) (the last σ above 0); got {terminal}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1]; got {strength}")


def check_sigmas(sigmas: torch.Tensor | Sequence[float], steps: int | None = None) -> torch.Tensor:
    """A user-given σ schedule as a float32 CPU tensor, or ValueError saying what is wrong with it.

    It must be 1-D with at least two values (steps + 1 of them when `steps` is given), finite, within [0, 1],
    non-increasing, and end at 0 (or within SIGMA_END_TOLERANCE of it).
    """
    values = torch.as_tensor(sigmas.detach().cpu() if isinstance(sigmas, torch.Tensor) else sigmas,
                             dtype=torch.float64)
    if values.ndim != 1:
        raise ValueError(f"SIGMAS must be a 1-D list of σ values; got shape {tuple(values.shape)}")
    if values.numel() < 2:
        raise ValueError(f"SIGMAS needs at least 2 values (one step); got {values.numel()}")
    if steps is not None and values.numel() != steps + 1:
        raise ValueError(f"SIGMAS has {values.numel()} values but {steps} steps need {steps + 1} (steps + 1); set "
                         f"steps to {values.numel() - 1} or give {steps + 1} values")
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"SIGMAS must be finite; σ[{i}] is {float(values[i])}")
    outside = ((values < 0) | (values > 1)).nonzero()
    if outside.numel():
        i = int(outside[0])
        raise ValueError(f"SIGMAS must lie in [0, 1] (σ = 1 is pure noise); σ[{i}] is {float(values[i]):g}")
    rises = (values[1:] > values[:-1]).nonzero()
    if rises.numel():
        i = int(rises[0]) + 1
        raise ValueError(f"SIGMAS must not increase: σ[{i}] = {float(values[i]):g} > σ[{i - 1}] = "
                         f"{float(values[i - 1]):g}")
    if values[-1] > SIGMA_END_TOLERANCE:
        raise ValueError(f"SIGMAS must end at 0 (the clean result); the last value is {float(values[-1]):g}: "
                         f"append 0")
    return values.to(torch.float32)


# ------------------------------------------------------------------------------------------ which schedule runs

#: The scheduler choice that picks the distilled list for a distilled checkpoint and LTX-2's own schedule otherwise.
AUTO = "auto"
#: safetensors metadata keys that may say whether a checkpoint is distilled: a top-level ``distilled`` entry, or a
#: ``distilled`` boolean in the ``config`` JSON (at its top or in its ``transformer`` section, where ltx-core and
#: ComfyUI read the architecture from).
DISTILLED_KEY = "distilled"
#: Lightricks' distilled single files are named ``ltx-2-19b-distilled.safetensors``, ``ltx-2-19b-distilled-fp8…``,
#: ``ltx-2.3-22b-distilled…``: an LTX-2 file name with ``distilled`` as one of its dash/underscore/dot-separated words.
_DISTILLED_NAME = re.compile(r"^ltx[-_]?2.*(^|[-_.])distilled([-_.]|$)", re.IGNORECASE)


def _metadata_flag(metadata: Mapping[str, str]) -> tuple[bool | None, str]:
    """(True/False, where) when the metadata says whether the checkpoint is distilled, else (None, "")."""
    raw = metadata.get(DISTILLED_KEY)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true", f'metadata "{DISTILLED_KEY}": {raw.strip().lower()}'
    try:
        config = json.loads(metadata.get("config") or "{}")
    except (TypeError, ValueError):
        return None, ""
    if not isinstance(config, dict):
        return None, ""
    transformer = config.get("transformer")
    for where, section in (("config", config), ("config.transformer", transformer)):
        if isinstance(section, dict) and isinstance(section.get(DISTILLED_KEY), bool):
            return section[DISTILLED_KEY], f'metadata {where} "{DISTILLED_KEY}": {str(section[DISTILLED_KEY]).lower()}'
    return None, ""


def checkpoint_distilled(metadata: Mapping[str, str], filename: str | None = None) -> tuple[bool, str]:
    """(is it a distilled LTX-2 checkpoint, the evidence): what its safetensors metadata says (see DISTILLED_KEY)
    wins; a file whose metadata is silent counts as distilled when it carries the official distilled files' name
    (ltx-2…-distilled…). The evidence reads as the end of "the checkpoint …" ("says so in its metadata …")."""
    flag, where = _metadata_flag(metadata)
    if flag is not None:
        return flag, f"{'is' if flag else 'is not'} distilled by its {where}"
    name = Path(filename).name if filename else ""
    if name and _DISTILLED_NAME.search(name):
        return True, f"is named like Lightricks' distilled checkpoints ({name}; its metadata does not say)"
    return False, "does not say it is distilled (no 'distilled' in its metadata or official distilled file name)"


def resolve_scheduler(requested: str, metadata: Mapping[str, str] | None = None, filename: str | None = None,
                      sigmas_given: bool = False) -> tuple[str, str]:
    """(scheduler for `SamplerSettings`, which σ run and why, as one line): the one place that decides. A SIGMAS
    input overrides every choice; `auto` is the official distilled list for a distilled checkpoint
    (`checkpoint_distilled` on the loaded file's metadata and name) and LTX-2's own schedule otherwise; any other
    choice is taken as given (the sampler checks the name)."""
    if sigmas_given:
        return ("ltx2" if requested == AUTO else requested), f"σ from the SIGMAS input (it overrides scheduler {requested})"
    if requested != AUTO:
        return requested, f"σ schedule {requested} as chosen"
    distilled, evidence = checkpoint_distilled(metadata or {}, filename)
    chosen = "distilled" if distilled else "ltx2"
    return chosen, f"σ schedule {chosen}: auto chose it because the checkpoint {evidence}"


def describe_sigmas(sigmas: torch.Tensor, limit: int = 17) -> str:
    """σ values as the node shows them: each as the shortest decimal that reads back as the same float32; a list
    longer than `limit` shows its first and last four values."""
    values = [np.format_float_positional(np.float32(v), unique=True, trim="-") for v in sigmas.tolist()]
    if len(values) > limit:
        values = [*values[:4], "…", *values[-4:]]
    return ", ".join(values)
