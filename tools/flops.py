"""The arithmetic of one energy+forces call of PaiNN, and the machine's FMA peak, so that a
benchmark can say how close a variant runs to the FLOP bound (docs/perf/README.md, "FLOP model").

FLOP (one multiply-add = 2) of energy + forces, no parameter gradients, F features, K radial
functions, L layers, N atoms, E directed edges:

    per atom and layer   60 F^2     interaction context net Dense(F,F), Dense(F,3F): 2 (2F^2 + 6F^2),
                                    mixing U (3 x F x 2F), Dense(2F,F), Dense(F,3F): 2 (12 + 4 + 6) F^2;
                                    the backward to the inputs costs what the forward does (x 2)
    per atom (readout)   2 F^2      Dense(F,F/2), Dense(F/2,1), forward and backward
    per edge and layer   18 F K     filter rows W = b + Wf phi (6FK forward), and in the backward
                                    a = b + Wf phi, b' = Wf phi' again (12FK): the fused kernels
                                    recompute the rows instead of storing (E, 3F)
                       + 70 F       gathers, products, scatters (19F forward, ~51F backward)

The paired algorithm (the C++ message kernels): the two directed edges of a pair (i <- j, r) and
(j <- i, -r) have the same filter rows, computed once; 18 F K per pair instead of per edge
(``pairs``: the number of such pairs, each two edges of E). It counts every pair of the plan as
paired: where a pair's atoms fall into two threads' ranges the kernels compute its rows twice, so
this is a lower bound of the work that ran.

The CUDA kernels pair only their dL/dr kernel: per edge the forward rows (6FK) and the node
backward's rows a (6FK), per pair the edge kernel's a and b' (12FK), so 18 F K per edge, which is
the per-edge count above (docs/cuda.md); the bench gives GPU runs the per-edge model.

Elementwise work (silu, norms, the radial functions) is a few percent at F = 128 and is left out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional


def energy_forces_flops(n_atoms: int, n_edges: int, features: int = 128, n_rbf: int = 20, layers: int = 3,
                        pairs: int = 0) -> dict:
    """FLOP of one energy + forces call; ``pairs`` > 0: by the paired algorithm (module docstring)."""
    f, k = features, n_rbf
    atoms = layers * 60 * f * f * n_atoms + 2 * f * f * n_atoms
    edges = layers * (18 * f * k * (n_edges - pairs) + 70 * f * n_edges)
    return {"atoms": atoms, "edges": edges, "total": atoms + edges}


def cpuinfo(field: str) -> str:
    """The first ``field`` of /proc/cpuinfo ("model name", "flags", "vendor_id"), or "" where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set:
    return set(cpuinfo("flags").split())


def cpu_vendor() -> str:
    return cpuinfo("vendor_id")


def isa() -> dict:
    """The instruction-set features that decide the kernels' speed."""
    flags = cpu_flags()
    return {name: name in flags for name in ("sse4_2", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16",
                                             "amx_tile", "amx_bf16")}


def clock_ghz() -> Optional[float]:
    """The highest clock the kernel reports (cpufreq's maximum, else /proc/cpuinfo's current MHz)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())]
        return max(mhz) / 1e3 if mhz else None
    except OSError:
        return None


def fma_peak_gflops(threads: int) -> dict:
    """cores x vector lanes x FMA units x 2 x clock, per dtype, as detected.

    Vector width: 512 bits with AVX-512 on Intel; AMD Zen 4 executes AVX-512 as two 256-bit halves,
    so 256 there, as with AVX2; 128 without AVX. Two FMA units per core (every AVX2/AVX-512 server
    core of the last decade; some low-end Intel SKUs have one 512-bit unit). An estimate: turbo,
    AVX frequency offsets and SMT are not modelled."""
    flags, vendor = cpu_flags(), cpu_vendor()
    if "avx512f" in flags and vendor == "GenuineIntel":
        bits = 512
    elif "avx2" in flags or "avx" in flags:
        bits = 256
    else:
        bits = 128
    ghz = clock_ghz()
    units = 2 if "fma" in flags else 1
    cores = min(threads, os.cpu_count() or 1)
    out = {"vector_bits": bits, "fma_units": units, "clock_ghz": ghz, "cores": cores}
    for name, size in (("float32", 32), ("float64", 64)):
        out[name] = None if ghz is None else cores * (bits // size) * units * 2 * ghz
    return out
