#!/usr/bin/env bash
# GPU evidence in one call on the device machine (see docs/cuda.md): the `cuda`-marked tests
# and the GPU benchmark. The device image has torch and cuda-bindings but no ase/vesin/
# hypothesis: carry them as wheels in .whl (see the device tool's README) and pass `.whl` in
# `carry`. Results go to $OUT (or docs/perf/gpu when run elsewhere).
# Status: written before any GPU session; not yet run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-docs/perf/gpu}"
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/.painnfx_src${PYTHONPATH:+:$PYTHONPATH}"
fi
# make `import painnfx.*` work from the source tree without installing
mkdir -p .painnfx_src/painnfx
for d in ops rewriter model tools; do ln -sfn "$PWD/$d" ".painnfx_src/painnfx/$d"; done
export PYTHONPATH="$PWD/.painnfx_src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/device.txt"
set -o pipefail
python3 -m pytest -q -m cuda tests 2>&1 | tee "$OUT_DIR/cuda_tests.log"
python3 -m painnfx.tools.cli bench --device cuda --dtype float32 --no-memory \
    --systems H2O CH4 benzene C16H34 Cu500 Cu2048 Cu8000 Cu32000 Cu108000 \
    --variants eager compile compile-ro fused optimized --out "$OUT_DIR/gpu_bench" 2>&1 | tee "$OUT_DIR/bench.log"
