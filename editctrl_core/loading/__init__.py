"""Loading: model presets and checkpoints (official single-file, diffusers folders, ComfyUI-native), LoRAs in
ComfyUI's key format, fp8 weights and SCD metadata — everything that turns files into modules."""
