"""painnfx.ops.cpu: the fused ops' CPU kernels in C++ (OpenMP), compiled on first use.

* ``painn_message.cpp``: message forward (over the CSR), backward (over the CSC, with dL/dr per
  edge and deterministic weight-gradient partials), radial filter forward/backward; the
  per-edge maths is ``ops/cuda/radial.cuh``, shared with the CUDA kernels;
* ``build.py``: the build and its on-disk cache; ``backend.py``: ctypes calls and the "cpp"
  backend's registration with ``painnfx.ops.dispatch``;
* ``native.py``, ``native_ops.cpp``, ``small_products.h``: operators registered with torch's
  dispatcher in C++ (``painnfx_native::dense``, small-row matrix products), built against the
  installed torch's headers, which compiled graphs call with no Python per call.
"""
