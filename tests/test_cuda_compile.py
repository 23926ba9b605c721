"""CUDA kernels compile with NVRTC on the CPU for sm_80, sm_90 and sm_100, without register spills;
compile errors name the call and carry the log; the CUBIN cache survives corruption."""

import pytest

from helpers import env_import, env_skip

nvrtc_mod = env_import("painnfx.ops.cuda.nvrtc")
try:
    nvrtc_mod.version()
except (ImportError, OSError, RuntimeError) as exc:  # pragma: no cover - environment without libnvrtc
    env_skip(f"NVRTC is unavailable ({type(exc).__name__}: {exc})", module=True)

from painnfx.ops.cuda.launcher import OPTIONS
from painnfx.ops.cuda.nvrtc import NvrtcError, compile_cubin, kernel_source, ptxas_stats

KERNELS = {
    "painn_message.cu": ["painn_message_forward_f32", "painn_message_forward_f64"],
    "painn_message_backward.cu": [f"painn_message_{k}_{s}" for k in ("backward_nodes", "backward_edges",
                                  "backward_weights", "reduce_partials") for s in ("f32", "f64")],
    "painn_update.cu": [f"painn_update_{k}_{s}" for k in ("forward", "backward") for s in ("f32", "f64")],
}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_100"])
@pytest.mark.parametrize("filename", sorted(KERNELS))
def test_kernels_compile_without_spills(filename, arch):
    out = compile_cubin(kernel_source(filename), filename, arch, OPTIONS, use_cache=False)
    assert out.cubin[:4] == b"\x7fELF"
    assert set(KERNELS[filename]) <= set(out.stats), out.log
    assert not out.spills(), f"register spills in {filename} for {arch}: {out.spills()}\n{out.log}"
    assert all(v["registers"] and v["registers"] <= 128 for v in out.stats.values()), out.stats


def test_float32_flushes_subnormals_like_the_cpu_kernels():
    """The kernels are compiled with --ftz=true (float32 subnormals flushed, as the C++ kernels'
    FTZ/DAZ and the emulator do); the flag reaches the code: the SASS differs without it."""
    assert "--ftz=true" in OPTIONS
    src = 'extern "C" __global__ void k(float* y, const float* a) { y[threadIdx.x] = a[threadIdx.x] * y[threadIdx.x]; }'
    ftz = compile_cubin(src, "ftz.cu", "sm_90", OPTIONS, use_cache=False)
    ieee = compile_cubin(src, "ftz.cu", "sm_90", ("-lineinfo",), use_cache=False)
    assert ftz.cubin != ieee.cubin


def test_kernel_sources_inline_their_local_headers():
    src = kernel_source("painn_message.cu")
    assert '#include "radial.cuh"' not in src and "PAINNFX_CUTOFF_MOLLIFIER" in src


def test_compile_error_names_the_call_and_shows_the_log():
    with pytest.raises(NvrtcError, match=r"nvrtcCompileProgram\(broken.cu, sm_90\) failed(.|\n)*undefined_thing"):
        compile_cubin('extern "C" __global__ void k() { undefined_thing(); }', "broken.cu", "sm_90", use_cache=False)


def test_cache_hits_and_recovers_from_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINNFX_CACHE_DIR", str(tmp_path))
    src = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] += 1.0f; }'
    first = compile_cubin(src, "k.cu", "sm_80")
    assert not first.cached
    second = compile_cubin(src, "k.cu", "sm_80")
    assert second.cached and second.cubin == first.cubin
    (cubin,) = (tmp_path / "cubin").glob("*.cubin")  # $PAINNFX_CACHE_DIR/<kind>, as for every build
    cubin.write_bytes(b"garbage")
    third = compile_cubin(src, "k.cu", "sm_80")
    assert not third.cached and third.cubin == first.cubin
    assert compile_cubin(src, "k.cu", "sm_80").cached
    other_arch = compile_cubin(src, "k.cu", "sm_90")
    assert not other_arch.cached  # the key includes the architecture


def test_ptxas_stats_parses_spills():
    log = ("ptxas info    : Compiling entry function 'a' for 'sm_90'\n"
           "ptxas         .     8 bytes stack frame, 16 bytes spill stores, 24 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 0 barriers\n")
    assert ptxas_stats(log) == {"a": {"registers": 255, "spill_stores": 16, "spill_loads": 24}}
