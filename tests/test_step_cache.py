"""The cross-edit caches work on models built the way ComfyUI builds them: inside torch.inference_mode, whose
tensors carry no version counter (the real-server tests run with the caches on, too)."""

from __future__ import annotations

import torch

from editctrl_core.edit.fast_decode import module_signature


def test_module_signature_of_an_inference_mode_model_tracks_swapped_weights():
    with torch.inference_mode():
        model = torch.nn.Linear(4, 4)
        before = module_signature([model])
        assert module_signature([model]) == before
        model.weight = torch.nn.Parameter(model.weight + 1, requires_grad=False)  # how ComfyUI patches weights
        assert module_signature([model]) != before
    plain = torch.nn.Linear(4, 4)
    signature = module_signature([plain])
    with torch.no_grad():
        plain.weight.add_(1.0)
    assert module_signature([plain]) != signature, "an in-place change of an ordinary weight bumps its version"
