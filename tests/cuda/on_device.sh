#!/usr/bin/env bash
# The GPU checks of issue 21 in one go, for a machine with an NVIDIA GPU whose
# python3 has PyTorch with CUDA: the gpu tests, the examples trained on the
# cuda target, and benchmarks/gpu.py. Logs go to $OUT (default ./gpu-logs).
# Wheels of missing pure dependencies may be put in .whl/ beforehand.
# Arguments choose parts: tests, examples, bench (default: all three).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DLC_CACHE_DIR=/tmp/dlc-cache
PARTS=" ${*:-tests examples bench} "
TASKS=${TASKS:-moons crnn adding sentiment autoencoder gan}   # the examples trained
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi; python3 -c "import sys, numpy, llvmlite, torch; print(sys.version, numpy.__version__,
  llvmlite.__version__, torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/env.txt"
python3 -c "import dlc.runtime as r; print(r.find_library())" 2>&1 | tee -a "$OUT/env.txt"

# The examples train in the background while the tests run (-n: the compiles
# run on the CPUs in parallel; the GPU is shared). Nothing else runs beside
# the benchmark.
if [[ $PARTS == *" examples "* ]]; then
  for task in $TASKS; do
    (timeout 150 python3 examples/train.py "$task" --target cuda > "$OUT/example-$task.txt" 2>&1;
     echo "rc=$?" >> "$OUT/example-$task.txt") &
  done
fi
if [[ $PARTS == *" tests "* ]]; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -n 6 -rfE tests/cuda 2>&1 \
    | tee "$OUT/pytest.txt"
fi
wait
if [[ $PARTS == *" examples "* ]]; then
  for task in $TASKS; do
    echo "== python3 examples/train.py $task --target cuda"; tail -3 "$OUT/example-$task.txt"
  done > "$OUT/examples.txt"
  rm "$OUT"/example-*.txt
  cat "$OUT/examples.txt"
fi
if [[ $PARTS == *" bench "* ]]; then
  timeout 280 python3 benchmarks/gpu.py 2>&1 | tee "$OUT/bench.txt"
fi
