"""Small helpers used by several test modules."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch

from painnfx.model.neighbors import neighbor_list
from painnfx.model.properties import compute_properties


def system_tensors(atoms, cutoff: float, dtype=torch.float64):
    nl = neighbor_list(atoms.positions, cutoff, atoms.cell.array, atoms.pbc, dtype=dtype)
    pos = torch.tensor(atoms.positions, dtype=dtype)
    numbers = torch.tensor(atoms.numbers, dtype=torch.long)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype)
    return pos, numbers, nl, cell


def evaluate(model, atoms, dtype=torch.float64, stress=False):
    pos, numbers, nl, cell = system_tensors(atoms, model.cutoff, dtype)
    return compute_properties(model, pos, numbers, nl.edge_index, nl.shifts, cell, stress=stress)


def perturbed_model(cfg: dict, dtype=torch.float64, scale: float = 0.1):
    """A PaiNN of config ``cfg`` with every parameter nudged (non-zero biases etc.), deterministic."""
    from painnfx.model.painn import PaiNN, PaiNNConfig

    model = PaiNN(PaiNNConfig(**cfg)).to(dtype)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(cfg.get("seed") or 0)
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return model


#: ``--require-env`` (the README's test command, CI; set by conftest): a missing piece of the
#: environment (NVRTC, the emulator, a C++ compiler, libasan, schnetpack, openmm, LAMMPS) fails
#: instead of skipping
REQUIRE_ENV = False
#: ``--fuzz-examples``: hypothesis examples per fuzz test (tests/test_fuzz.py; set by conftest)
FUZZ_EXAMPLES = 100


def env_skip(reason: str, module: bool = False):
    """Skip a test whose environment is missing, or fail it under ``--require-env``."""
    if REQUIRE_ENV:
        pytest.fail(f"--require-env, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


def env_import(name: str):
    """``pytest.importorskip`` that becomes a failure under ``--require-env``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        env_skip(f"{name} cannot be imported ({exc})", module=True)


#: what runs the fused ops on CPU tensors by default: the C++ kernels (conftest's each_backend
#: and test_cpu_backend fail under --require-env if they cannot be built)
CPU_KERNELS = "cpp"


def assert_fused(report, layers: int) -> None:
    """optimize() kept one fused message and one fused update block per layer after verification,
    per rewrite and end to end."""
    assert report.applied, report.to_text()
    assert report.fused_nodes == 2 * layers, report.to_text()
    assert report.end_to_end.startswith("passed"), report.end_to_end


def assert_kernels(calls, backend: str, forward: int, backward: int = None, updates: int = None) -> None:
    """``dispatch.record_calls()`` saw exactly ``forward`` message forwards and ``backward``
    backwards (default: as many), every one on ``backend``: the fused path ran, on that backend;
    with ``updates``, as many update-block forwards and backwards too."""
    backward = forward if backward is None else backward
    checks = [("painn_message", forward), ("painn_message_backward", backward)]
    if updates is not None:
        checks += [("painn_update", updates), ("painn_update_backward", updates)]
    for op, n in checks:
        ran = {b: k for (o, b), k in calls.items() if o == op and k}
        assert ran == ({backend: n} if n else {}), f"{op} ran {ran}, expected {n} call(s) on {backend}"


def native_ops_expected() -> bool:
    """Whether joint graphs on the CPU run the C++ library's ops (a C++ compiler built it;
    PAINNFX_NATIVE is not 0); under --require-env they must."""
    from painnfx.ops.cpu import backend
    from painnfx.rewriter.cpp_ops import enabled

    if REQUIRE_ENV and os.environ.get("PAINNFX_NATIVE", "1") != "0":
        assert backend.library() is not None, f"--require-env, but the C++ library cannot be built: {backend.info()}"
    return enabled()


def fused_target(name: str) -> str:
    """The node target of fused op ``name`` in a traced graph."""
    return f"painnfx.{name}.default"


class JointKernels:
    """What ran during a block: the fused ops per backend (``dispatch.record_calls``: the C++
    kernels counted in C++, also calls from Inductor's C++ wrapper) and ``native``, the C++
    library's own counts of every op it registers (``dense`` included)."""

    def __enter__(self):
        from painnfx.ops.cpu import backend
        from painnfx.ops.dispatch import record_calls

        self._before = backend.call_counts()
        self._record = record_calls()
        self.calls = self._record.__enter__()
        return self

    def __exit__(self, *exc):
        from painnfx.ops.cpu import backend

        self._record.__exit__(*exc)
        self.native = {op: n - self._before.get(op, 0) for op, n in backend.call_counts().items()
                       if n > self._before.get(op, 0)}
        return False

    def assert_message_kernels(self, layers: int) -> None:
        """Each layer's message forward and backward ran on the C++ kernels, and nothing else ran
        them."""
        assert_kernels(self.calls, CPU_KERNELS, layers, updates=None)


def corrupt_replacements(monkeypatch, corrupt) -> None:
    """While ``optimize`` verifies a rewrite, every fused replacement's outputs pass through
    ``corrupt`` (a wrong value, a wrong gradient, an exception), and no earlier rewrite is reused
    (from the process or the disk cache), so that verification runs and has to reject them."""
    from collections import OrderedDict

    from painnfx.rewriter import rewrite_cache
    from painnfx.rewriter.state import Replacement

    real = Replacement.__call__
    monkeypatch.setattr(Replacement, "__call__", lambda self, values: corrupt(real(self, values)))
    monkeypatch.setattr(importlib.import_module("painnfx.rewriter.optimize"), "_REWRITES", OrderedDict())
    monkeypatch.setattr(rewrite_cache, "load", lambda name, target: None)
    monkeypatch.setattr(rewrite_cache, "store", lambda name, cap, report: None)
