"""painnfx.ops.cuda: CUDA kernels for the fused ops, compiled at run time with NVRTC.

* ``nvrtc.py``: checked NVRTC calls, ptxas statistics, on-disk CUBIN cache;
* ``radial.cuh``: the per-edge radial maths of every spec of ``painnfx.ops.radial``;
* ``painn_message.cu`` / ``painn_message_backward.cu``: the message kernels (docs/cuda.md);
  ``painn_update.cu``: the update block's;
* ``launch.py``: kernel arguments (numpy-typed scalars, pointers), shared by the GPU launcher
  and the CPU emulator of the tests (``painnfx.tools.emulator``);
* ``message.py``, ``update.py``: the launches (kernels, grids, blocks, arguments) of each op's forward
  and backward; ``kernels.py``: the list of them, and of their sources;
* ``launcher.py``: compile for the device's arch, load, launch on PyTorch's current stream (cuda.core);
* ``backend.py``: registers the "cuda" backend with ``painnfx.ops.dispatch``.

Nothing here imports cuda-python until a kernel runs on a GPU.
"""
