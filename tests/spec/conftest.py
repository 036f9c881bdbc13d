"""Numeric spec tests: run torch single-threaded (tiny matmuls; OpenMP spinning under load costs
100x) and make this folder's helper modules importable."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
