"""The GPU launcher's glue without a GPU: a stand-in for cuda.core records what would be
launched (kernel, grid, block, stream, argument types)."""

import sys
import types

import numpy as np
import torch

from painnfx.ops import dispatch, prepare_edges
from painnfx.ops.cuda import launcher, message


class _Recorder(types.ModuleType):
    def __init__(self):
        super().__init__("cuda.core")
        self.calls = []

        class LaunchConfig:
            def __init__(self, grid, block):
                self.grid, self.block = grid, block

        self.LaunchConfig = LaunchConfig

    def launch(self, stream, config, kernel, *args):
        self.calls.append((stream, config.grid, config.block, kernel, args))


def test_run_passes_grid_block_stream_and_typed_arguments(monkeypatch):
    fake = _Recorder()
    monkeypatch.setitem(sys.modules, "cuda.core", fake)
    monkeypatch.setattr(launcher, "stream_for", lambda device: "stream-0")
    monkeypatch.setattr(launcher, "_kernels", {(0, "painn_message_forward_f32"): "kernel-handle"})
    gen = torch.Generator().manual_seed(0)
    n, e, f, k = 3, 7, 4, 5
    r = torch.randn(e, 3, generator=gen)
    ii, jj = torch.randint(0, n, (e,), generator=gen), torch.randint(0, n, (e,), generator=gen)
    x, w, b = torch.randn(n, 3 * f), torch.randn(3 * f, k), torch.randn(3 * f)
    params = torch.stack([torch.linspace(0, 3, k), torch.ones(k)])
    launch, dq, dmu = message.forward_launch(r, ii, jj, prepare_edges(r, ii, jj, n), x, None, w, b, params,
                                             "gaussian", "mollifier", [3.0, 1e-7])
    launcher.run(launch, torch.device("cuda", 0))
    ((stream, grid, block, kernel, args),) = fake.calls
    assert (stream, grid, block, kernel) == ("stream-0", (n, 1, 1), (32, 1, 1), "kernel-handle")
    assert args[5] == 0  # mu = None -> null pointer
    assert args[0] == r.data_ptr() and args[-2] == dq.data_ptr() and args[-1] == dmu.data_ptr()
    typed = [a for a in args if not isinstance(a, int)]
    assert [type(a) for a in typed] == [np.int32, np.int32, np.float32, np.float32, np.int32, np.int32]
    assert typed[2] == np.float32(3.0) and typed[3] == np.float32(1e-7)


def test_old_torch_streams_get_a_cuda_stream_adapter():
    class OldStream:
        cuda_stream = 1234

    assert launcher.CudaStream(OldStream()).__cuda_stream__() == (0, 1234)


def test_the_cuda_backend_is_registered_for_cuda_tensors():
    assert "cuda" in dispatch.available_backends()
    assert dispatch.chosen("painn_message", "cuda") == "cuda"
    assert dispatch.chosen("painn_message_backward", "cuda") == "cuda"
    assert dispatch.chosen("painn_message", "cpu") == "cpp"
    with dispatch.use_backend("reference"):
        assert dispatch.chosen("painn_message", "cuda") == "reference"
