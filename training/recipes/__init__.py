"""One-command training recipes (e.g. `python -m training.recipes.tiny_synthetic --out weights/`)."""
