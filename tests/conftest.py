"""Tests by subject: algorithms/ (the registry-wide contract, each algorithm against slow references, cards),
data/ (sources in their real formats, splits, augmentation), models/, core/ (config, losses, schedules, EMA,
metrics), loop/ (training, resume, reliability, DDP, CUDA, end-to-end learning), use/ (predict, export,
report, the worked example), benchmarks/ (the bench scripts run). Shared helpers live beside this file:
helpers.py (the CLI runner, tiny runs, a tiny model and batch) and writers.py (files in the real formats)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from helpers import ...` in every subject folder
