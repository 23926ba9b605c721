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

Everything except the capture itself runs on any device (``capture=False`` replays the same
step eagerly on the static buffers), which is how the padding and overflow logic is tested on
the CPU.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .properties import Properties, compute_properties


class GraphedEvaluator:
    def __init__(self, model, numbers: torch.Tensor, *, stress: bool = False, capacity: int = 0,
                 headroom: float = 1.25, capture: Optional[bool] = None, warmup: int = 2):
        p = next(iter(model.parameters()))
        self.model, self.dtype, self.device = model, p.dtype, p.device
        self.capture = self.device.type == "cuda" if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise ValueError("CUDA-graph capture needs the model on a CUDA device")
        self.cutoff = float(model.cutoff)
        self.stress, self.headroom, self.warmup = stress, headroom, warmup
        self.numbers = numbers.to(self.device).clone()
        n = len(numbers)
        self.positions = torch.zeros(n, 3, dtype=self.dtype, device=self.device)
        self.cell = torch.eye(3, dtype=self.dtype, device=self.device)
        self.capacity = 0
        self.captures = 0  # how many times a step was (re)captured
        self._graph = None
        self._out: Optional[Properties] = None
        if capacity:
            self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.edge_index = torch.zeros(2, capacity, dtype=torch.long, device=self.device)
        self.shifts = torch.zeros(capacity, 3, dtype=self.dtype, device=self.device)
        self._graph = None

    def _pad(self, n_edges: int) -> None:
        self.edge_index[:, n_edges:] = 0
        self.shifts[n_edges:] = 0
        self.shifts[n_edges:, 0] = 2.0 * self.cutoff

    def _step(self) -> Properties:
        return compute_properties(self.model, self.positions, self.numbers, self.edge_index, self.shifts, self.cell,
                                  stress=self.stress)

    def _record(self) -> None:
        self.captures += 1
        if not self.capture:
            self._graph = "eager"
            return
        from painnfx.ops.cuda.launcher import load

        load(self.device)  # compile and load every kernel before the capture
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self._step()
        self._graph = graph

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
        if self._graph is None:
            self._record()
        if self._graph == "eager":
            out = self._step()
        else:
            self._graph.replay()
            out = self._out
        return Properties(out.energy.clone(), out.forces.clone(), None if out.stress is None else out.stress.clone())
