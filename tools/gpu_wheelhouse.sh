#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with the cp312 manylinux wheels the GPU machine's image lacks
# (it has torch, cuda-bindings, cuda-core, nvidia-cuda-nvrtc, numpy, scipy, matplotlib,
# hypothesis, pytest, tqdm; no ase, no vesin, and no network). gpu_check.sh installs them with
# --no-index. Run here, in the repository root, before the device call that carries `.whl`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .gitignore || echo "/.whl/" >> .gitignore
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
# the versions this project is tested with here (pip show ase vesin)
for pkg in "ase==${ASE_VERSION:-$(python3 -m pip show ase 2>/dev/null | awk '/^Version/{print $2}')}" \
           "vesin==${VESIN_VERSION:-$(python3 -m pip show vesin 2>/dev/null | awk '/^Version/{print $2}')}"; do
    pkg=${pkg%==}
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$pkg" || python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation py --platform any -d .whl "$pkg"
done
ls -la .whl
du -sh .whl
