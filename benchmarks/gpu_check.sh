#!/usr/bin/env bash
# filtag-kg's GPU check, for a machine with one GPU and nothing else: no datasets, no
# weights, no internet. It uses the Python and torch already installed there (it installs
# nothing from the network) and the repository's working tree (on PYTHONPATH), and prints:
#   1. the CUDA tests (pytest -m cuda; test modules whose imports are missing are reported
#      and skipped);
#   2. for VGG16 and ResNet-50 with random weights on synthetic in-memory batches of 128:
#      plain inference images/s, profile/plain and explain/plain in fp32 and bf16, peak GPU
#      memory (benchmarks/gpu_check.py), then the real profile and explain passes end to
#      end on a few generated images with bf16.
# Figures also go to gpu_check.json. Budget: under 8 minutes on an H100/H200.
#
# Usage: benchmarks/gpu_check.sh [gpu_check.py options, e.g. --batch-size 64]
#        PYTHON=/path/to/python benchmarks/gpu_check.sh
#        WHEELS=/dir/with/wheels benchmarks/gpu_check.sh   (offline installs of missing packages)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
echo "== filtag-kg GPU check, $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch; install torch with CUDA on this machine first" >&2
  exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'devices', torch.cuda.device_count())"
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"numpy": "numpy", "torchvision": "torchvision", "pyarrow": "pyarrow", "tqdm": "tqdm",
        "PIL": "pillow", "networkx": "networkx", "pytest": "pytest"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [ -n "$missing" ]; then
  if [ -n "${WHEELS:-}" ]; then
    echo "installing from $WHEELS (offline): $missing"
    "$PY" -m pip install --no-index --find-links "$WHEELS" $missing || echo "gpu_check: offline install failed" >&2
  else
    echo "gpu_check: missing Python packages: $missing (no network here: set WHEELS to a folder of wheels)" >&2
  fi
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device" >&2
  exit 2
fi

echo "== CUDA tests (pytest -m cuda)"
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors tests/
  echo "CUDA tests exit status $? ($((SECONDS - start)) s so far)"
else
  echo "gpu_check: pytest missing, CUDA tests skipped" >&2
fi

echo "== throughput (benchmarks/gpu_check.py)"
timeout 300 "$PY" benchmarks/gpu_check.py --json gpu_check.json "$@"
status=$?
echo "== done in $((SECONDS - start)) s (throughput exit status $status; figures in gpu_check.json)"
exit $status
