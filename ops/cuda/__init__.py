"""painnfx.ops.cuda: CUDA kernels for the fused ops, compiled at run time with NVRTC.

Status: the NVRTC compile path (``nvrtc.py``: checked calls, ptxas statistics, on-disk CUBIN
cache) and the forward kernel source of ``painn_message`` exist and are compiled for sm_80
and sm_90 in CI. The launcher and the backward kernels, and therefore the registration of a
"cuda" backend, need a GPU session to be written and verified; until then every device runs
the reference backend.
"""
