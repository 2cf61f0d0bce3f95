"""Tests by subject: algorithms/ (the registry-wide contract, each algorithm against slow references, cards),
data/ (sources in their real formats, splits, augmentation), models/, core/ (config, losses, schedules, EMA,
metrics), loop/ (training, resume, reliability, DDP, CUDA, end-to-end learning), use/ (predict, export,
report, the worked example), benchmarks/ (the bench scripts run). Shared helpers live beside this file:
helpers.py (the CLI runner, tiny runs, a tiny model and batch) and writers.py (files in the real formats)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from helpers import ...` in every subject folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and far faster when the CPU is shared (no OpenMP spinning).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
