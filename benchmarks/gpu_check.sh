#!/usr/bin/env bash
# The GPU check in one call (under 10 minutes on one GPU): CUDA tests, FixMatch WRN-28-2 images/s of
# semisup and USB 0.3.2 on the same GPU, the CIFAR-10-4000 preset trained for --minutes. Figures go to
# $OUT (or --out DIR) as gpu_check.md / gpu_check.json; --results benchmarks/RESULTS.md writes the GPU's section.
#
#   bash benchmarks/gpu_check.sh --data cifar10-jpeg.tar.gz [--minutes 3] [--wheels DIR]
#   bash benchmarks/gpu_check.sh --data /tmp/cifar10 --dry --usb-python ~/.cache/semisup-peers/usb-venv/bin/python
#
# semisup runs from this checkout; what it imports is installed only if missing (pip install -e .).
# USB: --wheels DIR installs semilearn and the two packages it needs beyond a PyTorch image from a folder of
# wheels (pip download --no-deps semilearn==0.3.2 'ruamel.yaml<0.18' progress), else from PyPI.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision, numpy, yaml, tqdm, sklearn, PIL, matplotlib" 2>/dev/null; then
    "$PY" -m pip install -q -e . || { echo "gpu_check: cannot install semisup's requirements" >&2; exit 2; }
fi
exec "$PY" benchmarks/gpu_check.py "$@"
