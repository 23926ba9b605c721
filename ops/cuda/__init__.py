"""painnfx.ops.cuda: CUDA kernels for the fused ops, compiled at run time with NVRTC.

Status: the NVRTC compile path (``nvrtc.py``: checked calls, ptxas statistics, on-disk CUBIN
cache), the per-edge radial maths shared by every kernel (``radial.cuh``: one case per spec
of ``painnfx.ops.radial``, switched on the specs' kernel ids, also compiled by the host C++
compiler in the tests) and the forward kernel source of ``painn_message`` exist and are
compiled for sm_80, sm_90 and sm_100 in CI. The launcher, the backward kernels and the
registration of a "cuda" backend with ``painnfx.ops.dispatch`` are the CUDA issue's work;
until then every device runs the reference implementation.
"""
