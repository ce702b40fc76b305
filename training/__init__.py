"""EditCtrl training module: SCD LoRA, EditCtrl adapters and TMA training, data precompute, mask strategies."""
