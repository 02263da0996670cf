#!/usr/bin/env bash
# Run on a lent NVIDIA GPU machine (the `device` tool), from the repository root, after
# `bash ../shared/tools/device-wheels.sh` fetched the Jupyter wheels into .whl here (carry `.whl`).
# Executes every chapter with profile=full on CUDA and the kernel benchmarks; everything lands
# under $OUT: executed notebooks, metrics, and results/<gpu>/ ready to commit.
#   usage: bash benchmarks/gpu_session.sh [CHAPTER ...]     (default: every chapter)
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -m ipykernel install --user --name python3 >/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
chapters=("$@")
[ ${#chapters[@]} -gt 0 ] || mapfile -t chapters < <(python3 -m dynbook.cli list | awk '/^ *[0-9]+ /{print $1}')
status=0
for ch in "${chapters[@]}"; do
  python3 -m dynbook.cli run "$ch" --profile full --device cuda --out "$OUT/run" --no-progress || status=1
done
for b in benchmarks/bench_*.py; do
  [ -e "$b" ] && { python3 "$b" --device cuda --out "$OUT/bench" || status=1; }
done
# results/<gpu>/: the metrics of this run, each file with its own provenance
gpu=$(python3 -c "import json,glob,dynbook.environment as e; print(e.hardware_slug(json.load(open(sorted(glob.glob('$OUT/run/metrics/*.json'))[0]))['hardware']))")
mkdir -p "$OUT/results/$gpu"
cp "$OUT"/run/metrics/*.json "$OUT/results/$gpu/" 2>/dev/null || true
cp "$OUT"/bench/*.json "$OUT/results/$gpu/" 2>/dev/null || true
ls -l "$OUT/results/$gpu"
exit $status
