"""painnfx.ops.cpu: the fused ops' CPU kernels in C++ (OpenMP), one library compiled on first use.

* ``painn_message.cpp``: message forward (over the CSR), backward (over the CSC, with dL/dr per
  edge and deterministic weight-gradient partials), radial filter forward/backward; the
  per-edge maths is ``ops/cuda/radial.cuh``, shared with the CUDA kernels;
* ``painn_update.cpp``: the update block, forward and backward;
* ``operators.cpp``: each fused op's CPU kernel registered with torch's dispatcher,
  with its argument checks, and ``painnfx::dense`` (small-row matrix products, ``small_products.h``);
* ``build.py``: the build and its on-disk cache; ``prebuild.py``: the build in a process of its own;
  ``backend.py``: loading the library and the "cpp" backend's registration with
  ``painnfx.ops.dispatch``; ``dense.py``: ``dense``'s Python parts.
"""
