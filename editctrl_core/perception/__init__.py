"""Perception: Qwen-VL (detection and TMA semantic tokens), SAM silhouettes, and object masks from them."""
