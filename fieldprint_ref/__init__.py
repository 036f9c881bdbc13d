"""The reference engine: plain PyTorch over `spec`, simple and obviously right."""
