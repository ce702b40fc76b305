"""The edit: edit context, masks, geometry, the SCD split and its fast decoder, the training-free and full modes,
EditCtrl adapters, guidance, σ schedules, boundary blending, and the sampler that ties them together."""
