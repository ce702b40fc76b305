"""Media: video files in and out, the VAE (whole and tiled), and the synthetic clips tests and recipes train on."""
