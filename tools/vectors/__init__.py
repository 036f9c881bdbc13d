"""Vector generators, one module per area; each exposes `generate(out_dir)`."""
