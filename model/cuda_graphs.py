"""CUDA-graph mode for fixed-size MD: one whole step (energy, forces, stress) captured once and
replayed on new positions.

A capture freezes pointers and sizes, so the evaluator keeps static buffers for positions,
the edge list and the cell, with an edge **capacity** above the current neighbor count.
Unused slots are padding edges that cannot contribute: atom 0 to its own image at
(2 r_c, 0, 0), so |r| >= r_c, the cutoff and its derivative are exactly 0 there, and r is
never 0 (the kernels divide by d). When a step has more edges than the capacity (the
**overflow**, known on the host, where vesin builds the neighbor list), the evaluator
re-captures with a larger capacity (``headroom`` times the new count); neighbors are never
dropped. The kernels are compiled and loaded before the first capture.

How a step is captured is a ``recorder``: a callable that takes the step (a function of the
static buffers) and returns its replay. ``CudaGraphRecorder`` is the real one (torch.cuda.graph);
``EagerRecorder`` (``capture=False``) re-runs the step on the static buffers at every replay, so
everything but the capture itself runs on any device, which is how the capacity, padding and
overflow logic is tested on the CPU (and, with a recorder that replays into the captured output
tensors as a graph does, on the emulated CUDA kernels).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .properties import Properties, compute_properties

Step = Callable[[], Properties]


class EagerRecorder:
    """No capture: a replay runs the step again on the static buffers."""

    def __call__(self, step: Step) -> Step:
        return step


class CudaGraphRecorder:
    """Capture the step in a ``torch.cuda.CUDAGraph`` after compiling and loading every kernel
    and ``warmup`` eager runs on a side stream; a replay returns the captured output tensors."""

    def __init__(self, device: torch.device, warmup: int = 2):
        self.device, self.warmup = device, warmup

    def __call__(self, step: Step) -> Step:
        from painnfx.ops.cuda.launcher import load

        load(self.device)  # compile and load every kernel before the capture
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()

        def replay() -> Properties:
            graph.replay()
            return out

        return replay


class GraphedEvaluator:
    def __init__(self, model, numbers: torch.Tensor, *, stress: bool = False, capacity: int = 0,
                 headroom: float = 1.25, capture: Optional[bool] = None, warmup: int = 2,
                 recorder: Optional[Callable[[Step], Step]] = None):
        p = next(iter(model.parameters()))
        self.model, self.dtype, self.device = model, p.dtype, p.device
        self.capture = self.device.type == "cuda" if capture is None else capture
        if self.capture and self.device.type != "cuda" and recorder is None:
            raise ValueError("CUDA-graph capture needs the model on a CUDA device")
        if recorder is None:
            recorder = CudaGraphRecorder(self.device, warmup) if self.capture else EagerRecorder()
        self.recorder = recorder
        self.cutoff = float(model.cutoff)
        self.stress, self.headroom = stress, headroom
        self.numbers = numbers.to(self.device).clone()
        n = len(numbers)
        self.positions = torch.zeros(n, 3, dtype=self.dtype, device=self.device)
        self.cell = torch.eye(3, dtype=self.dtype, device=self.device)
        self.capacity = 0
        self.captures = 0  # how many times a step was (re)captured
        self._replay: Optional[Step] = None
        if capacity:
            self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.edge_index = torch.zeros(2, capacity, dtype=torch.long, device=self.device)
        self.shifts = torch.zeros(capacity, 3, dtype=self.dtype, device=self.device)
        self._replay = None

    def _pad(self, n_edges: int) -> None:
        self.edge_index[:, n_edges:] = 0
        self.shifts[n_edges:] = 0
        self.shifts[n_edges:, 0] = 2.0 * self.cutoff

    def _step(self) -> Properties:
        return compute_properties(self.model, self.positions, self.numbers, self.edge_index, self.shifts, self.cell,
                                  stress=self.stress)


    def __call__(self, positions, edge_index, shifts, cell=None) -> Properties:
        """Energy, forces (and stress) for this step's positions and neighbor list."""
        n_edges = edge_index.shape[1]
        if n_edges > self.capacity:  # overflow: a larger capacity and a new capture
            self._allocate(max(8, math.ceil(n_edges * self.headroom)))
        self.positions.copy_(positions)
        self.edge_index[:, :n_edges].copy_(edge_index)
        self.shifts[:n_edges].copy_(shifts)
        self._pad(n_edges)
        if cell is not None:
            self.cell.copy_(cell)
        if self._replay is None:
            self.captures += 1
            self._replay = self.recorder(self._step)
        out = self._replay()
        return Properties(out.energy.clone(), out.forces.clone(), None if out.stress is None else out.stress.clone())
