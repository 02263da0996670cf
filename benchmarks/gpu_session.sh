#!/usr/bin/env bash
# One short session on a lent NVIDIA GPU (the `device` tool), from the repository root:
#   1. the kernel tests on CUDA (every forced configuration runs compiled, with its warps),
#   2. the kernel benchmarks (each writes its JSON after every measurement),
#   3. the chapters (profile full by default), as long as time is left.
# Each step has its own time bound and the whole stays under SESSION_SECONDS (default 570 s, a
# 10-minute device call with room to copy $OUT back). Whatever finished lands under $OUT: test
# log, benchmark JSON, executed notebooks and metrics, and results/<gpu>/ ready to commit.
#
#   usage: OUT=/some/dir bash benchmarks/gpu_session.sh [CHAPTER ...]   (default: every chapter)
#
# Wheels: if .whl/*.whl were carried (bash ../shared/tools/device-wheels.sh), they are installed
# into /tmp/site; without them the session goes on with what the machine has, and the chapter
# step is skipped if Jupyter's kernel cannot be found.
# Knobs (environment): DEVICE (cuda), QUICK (0; 1 = tiny benchmark sizes), PROFILE (full),
# KERNEL_TESTS (the kernel test files), BENCHES (benchmarks/bench_*.py), CHAPTERS ("" = all,
# "none" = skip), T_TESTS (150), T_BENCH (200 per benchmark), SESSION_SECONDS (570).
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PROFILE=${PROFILE:-full}
KERNEL_TESTS=${KERNEL_TESTS:-"tests/test_kernel_scan.py tests/test_kernel_rk4_mlp.py tests/test_kernel_roofline.py"}
BENCHES=${BENCHES:-$(ls benchmarks/bench_*.py)}
T_TESTS=${T_TESTS:-150}
T_BENCH=${T_BENCH:-200}
SESSION_SECONDS=${SESSION_SECONDS:-570}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
status=0
left() { echo $(( SESSION_SECONDS - SECONDS )); }
bound() {  # the smaller of a step's own bound and what is left of the session (at least 1 s)
  local b=$1 l; l=$(left); [ "$l" -lt "$b" ] && b=$l; [ "$b" -lt 1 ] && b=1; echo "$b"
}
log() { echo "[gpu_session $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/session.log"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} || log "wheel install failed (going on)"
else
  log "no .whl carried: using the machine's packages"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
fi

# 1. kernel tests
log "kernel tests (bound $(bound "$T_TESTS") s): $KERNEL_TESTS"
# shellcheck disable=SC2086
timeout "$(bound "$T_TESTS")" $PY -m pytest -q -x -p no:cacheprovider $KERNEL_TESTS > "$OUT/kernel_tests.log" 2>&1
rc=$?; tail -3 "$OUT/kernel_tests.log" | tee -a "$OUT/session.log"
[ $rc -eq 0 ] || { status=1; log "kernel tests: exit $rc (124 = time bound)"; }

# 2. benchmarks
mkdir -p "$OUT/bench"
for b in $BENCHES; do
  [ -e "$b" ] || continue
  [ "$(left)" -gt 5 ] || { log "no time left for $b"; status=1; continue; }
  log "$b (bound $(bound "$T_BENCH") s)"
  args=(--device "$DEVICE" --out "$OUT/bench")
  [ "$QUICK" = 1 ] && args+=(--quick)
  timeout "$(bound "$T_BENCH")" $PY "$b" "${args[@]}" > "$OUT/bench/$(basename "$b" .py).log" 2>&1
  rc=$?; tail -2 "$OUT/bench/$(basename "$b" .py).log" | tee -a "$OUT/session.log"
  [ $rc -eq 0 ] || { status=1; log "$b: exit $rc (124 = time bound; its JSON keeps what was measured)"; }
done

# 3. chapters, while time is left
chapters=("$@")
if [ "${CHAPTERS:-}" = none ]; then
  chapters=()
  log "chapters skipped (CHAPTERS=none)"
elif ! $PY -c "import jupyter_client, ipykernel" 2>/dev/null; then
  chapters=()
  log "chapters skipped: no Jupyter kernel (carry .whl)"
else
  $PY -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
  [ ${#chapters[@]} -gt 0 ] || read -r -a chapters <<< "${CHAPTERS:-$($PY -m dynbook.book.cli list | awk '/^ *[0-9]+ /{printf "%s ", $1}')}"
fi
for ch in "${chapters[@]}"; do
  [ "$(left)" -gt 30 ] || { log "no time left for chapter $ch"; status=1; continue; }
  log "chapter $ch (bound $(bound 600) s)"
  timeout "$(bound 600)" $PY -m dynbook.book.cli run "$ch" --profile "$PROFILE" --device "$DEVICE" --out "$OUT/run" \
    --no-progress > "$OUT/chapter_$ch.log" 2>&1 || { status=1; log "chapter $ch: failed or timed out"; }
done

# results/<gpu>/: what this run measured, each file with its own provenance
$PY - "$OUT" <<'EOF' || status=1
import glob, json, shutil, sys
from pathlib import Path
out = Path(sys.argv[1])
files = sorted(glob.glob(str(out / "run" / "metrics" / "*.json"))) + sorted(glob.glob(str(out / "bench" / "*.json")))
if not files:
    print("[gpu_session] no metrics or benchmark JSON to collect")
    sys.exit(0)
try:
    from dynbook.book import environment
    hw = json.load(open(files[0])).get("hardware") or {}
    slug = environment.hardware_slug(hw) if hw else "unknown"
except Exception as e:  # noqa: BLE001 - collecting must not lose the files
    print(f"[gpu_session] hardware slug unavailable ({e}); using 'unknown'")
    slug = "unknown"
dest = out / "results" / slug
dest.mkdir(parents=True, exist_ok=True)
for f in files:
    shutil.copy(f, dest)
print(f"[gpu_session] {len(files)} files in {dest}")
EOF
log "done, exit $status"
exit $status
