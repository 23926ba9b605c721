#!/usr/bin/env bash
# GPU evidence in one call on a GPU machine (docs/cuda.md):
#   1. device.txt        nvidia-smi name, memory, driver; torch and CUDA versions
#   2. tests.log         pytest -m "cuda or emulated" (kernels vs reference on the device, dispatch,
#                        non-default stream, CUDA-graph capture/replay/overflow)
#   3. sanitizer.log     compute-sanitizer memcheck, racecheck, synccheck on a small forward+backward
#   4. gpu_bench.*       painnfx bench --device cuda, fp32 and fp64 (CUDA-event timings), and the
#                        largest Cu cell eager and optimized evaluate
# Each stage writes its file into $OUT as it finishes (at most 8 files come back); a failed stage
# does not stop the next. Before the call, run tools/gpu_wheelhouse.sh here and carry `.whl`.
#
# DRY_RUN=1 runs the same stages on the CPU with tiny sizes (the cuda parts skipped): the test
# suite does this (tests/test_gpu_check.py), so the script cannot rot before a GPU is lent.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-docs/perf/gpu}"
DRY="${DRY_RUN:-0}"
mkdir -p "$OUT_DIR"
status="$OUT_DIR/device.txt"  # the stage summary is appended to it (at most 8 files come back)
stage() {  # stage NAME COMMAND...: run, record ok/failed, never stop the script
    local name=$1; shift
    local t0=$SECONDS
    if "$@"; then echo "$name ok $((SECONDS - t0))s" >> "$status"; else echo "$name FAILED $((SECONDS - t0))s" >> "$status"; fi
}

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import painnfx.ops" 2>/dev/null; then  # run from the source tree without installing
    mkdir -p .painnfx_src/painnfx
    for d in ops rewriter model tools; do ln -sfn "$PWD/$d" ".painnfx_src/painnfx/$d"; done
    export PYTHONPATH="$PWD/.painnfx_src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

device_info() {
    { if [ "$DRY" = 1 ]; then echo "dry run: no GPU"; else
          nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    } > "$OUT_DIR/device.txt" 2>&1
}
run_tests() {  # fails unless tests ran and passed: a run where everything skipped proves nothing
    local log="$OUT_DIR/tests.log"
    if [ "$DRY" = 1 ]; then  # no GPU: the same stage on the emulated CUDA kernels, end to end
        python3 -m pytest -q -p no:cacheprovider -m emulated tests/test_emulated_backend.py -k end_to_end > "$log" 2>&1
    else
        python3 -m pytest -q -p no:cacheprovider -m "cuda or emulated" tests > "$log" 2>&1
    fi
    local rc=$?
    grep -qE "[0-9]+ passed" "$log" || { echo "no test passed" >> "$log"; return 1; }
    if grep -q "needs a CUDA device" "$log"; then echo "the cuda tests skipped: no GPU visible to torch" >> "$log"; return 1; fi
    return $rc
}
sanitize() {
    local script="python3 -m painnfx.tools.sanitize_step"
    if [ "$DRY" = 1 ]; then
        { echo "dry run: compute-sanitizer skipped; the step it would check:"; $script --device cpu; } > "$OUT_DIR/sanitizer.log" 2>&1
        return
    fi
    : > "$OUT_DIR/sanitizer.log"
    local ok=0
    for tool in memcheck racecheck synccheck; do
        echo "== compute-sanitizer --tool $tool" >> "$OUT_DIR/sanitizer.log"
        compute-sanitizer --tool "$tool" --error-exitcode 1 $script --device cuda >> "$OUT_DIR/sanitizer.log" 2>&1 || ok=1
    done
    return $ok
}
bench() {
    local dev=cuda systems="H2O CH4 benzene C16H34 Cu500 Cu2048 Cu8000 Cu32000 Cu108000"
    local variants="eager compile compile-ro optimized optimized-graphs" extra=()
    if [ "$DRY" = 1 ]; then dev=cpu; systems="H2O"; variants="eager optimized"; extra=(--max-time 0.05 --min-repeats 1 --warmup 0); fi
    local ok=0
    for dtype in float32 float64; do
        python3 -m painnfx.tools.cli bench --device $dev --dtype $dtype --no-memory --quiet --systems $systems \
            --variants $variants "${extra[@]}" --out "$OUT_DIR/gpu_bench_$dtype" >> "$OUT_DIR/bench.log" 2>&1 || ok=1
    done
    python3 - "$OUT_DIR" <<'PY' || ok=1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
merged = {d: json.loads((out / f"gpu_bench_{d}.json").read_text()) for d in ("float32", "float64")
          if (out / f"gpu_bench_{d}.json").exists()}
(out / "gpu_bench.json").write_text(json.dumps(merged, indent=2))
(out / "gpu_bench.md").write_text("\n\n".join(f"## {d}\n\n" + (out / f"gpu_bench_{d}.md").read_text() for d in merged))
for d in merged:  # keep the file count under the 8 that come back
    for suffix in (".json", ".md"):
        (out / f"gpu_bench_{d}{suffix}").unlink()
(out / "gpu_bench_float32.png").rename(out / "gpu_bench.png") if (out / "gpu_bench_float32.png").exists() else None
for extra in out.glob("gpu_bench_float64.png"):
    extra.unlink()
PY
    if [ "$DRY" = 1 ]; then
        python3 -m painnfx.tools.cli bench --largest --largest-atoms 1500 --device cpu --variants optimized --quiet \
            --out "$OUT_DIR/largest" >> "$OUT_DIR/bench.log" 2>&1 || ok=1
    else
        python3 -m painnfx.tools.cli bench --largest --device cuda --variants eager optimized --case-timeout 240 \
            --out "$OUT_DIR/largest" >> "$OUT_DIR/bench.log" 2>&1 || ok=1
    fi
    return $ok
}

stage device device_info
stage tests run_tests
stage sanitizer sanitize
stage bench bench
tail -n 4 "$status"
