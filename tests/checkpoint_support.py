"""Shared check of the decoder tests: gradient checkpointing must not change an adapter's gradients."""

from __future__ import annotations

import torch

from editctrl_core.edit.scd import SCDModel


def assert_checkpointing_keeps_gradients(scd: SCDModel, index: torch.Tensor, context: torch.Tensor,
                                         grid: tuple[int, int, int], text, background: torch.Tensor,
                                         edit_mask: torch.Tensor, x: torch.Tensor,
                                         global_input: torch.Tensor | None = None) -> None:
    """Decode with and without checkpointed blocks (a fresh plan each time) and compare the global-context
    embedder's gradients; they must be non-zero and equal."""
    model, glob = scd.transformer, scd.global_context
    if global_input is None:
        global_input = torch.cat([background, edit_mask[None, None].to(background)], dim=1)
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        glob.zero_grad()
        plan = scd.plan(index, context, grid, text, background=background, edit_mask=edit_mask,
                        global_input=global_input)
        try:
            scd.decode(plan, x, torch.tensor([0.6])).pow(2).mean().backward()
        finally:
            model.gradient_checkpointing = False
        grads.append([p.grad.clone() for p in glob.parameters() if p.grad is not None])
    assert grads[0] and any(float(g.abs().max()) > 0 for g in grads[0])
    # the recomputation repeats the same float32 ops (equal today); one backward and no optimiser step, so another
    # accumulation order could only move a gradient by rounding (~1e-7 relative), far inside these tolerances
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
