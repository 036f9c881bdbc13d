"""The Triton engine: fast on NVIDIA GPUs and bit-exact with `spec`."""
