"""Capture the energy graph of a model as an aten-level torch.fx graph.

``torch.export`` (non-strict) traces ``energy(positions, numbers, edge_index, shifts)`` with
the atom and edge counts symbolic. Tracing happens below the Python layer, so many spellings
of the same model already coincide here: Linear as a module or functional both become
``aten.linear``, jit-scripted helpers (schnetpack's ``scatter_add``) become the aten ops they
run, methods and functions are the same op. Parameters and buffers are lifted to graph
inputs; ``Captured.inputs`` says which placeholder is which, so the optimized module can feed
the live parameters of the model (training keeps working) and the rewriter can read buffer
values (basis centres, widths, cutoff) as constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.fx as fx
from torch.export import Dim, export
from torch.export.graph_signature import InputKind


@dataclass
class GraphInput:
    kind: str  # "parameter" | "buffer" | "constant" | "user"
    name: str  # parameter/buffer FQN, or the user argument's name
    node: str  # placeholder name in the graph


@dataclass
class Captured:
    gm: fx.GraphModule
    inputs: list[GraphInput]
    module: torch.nn.Module
    constants: dict = field(default_factory=dict)  # placeholder name -> tensor (buffers, lifted constants)

    def placeholders(self) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if n.op == "placeholder"]


USER_INPUTS = ("positions", "numbers", "edge_index", "shifts")


def example_inputs(module: torch.nn.Module, n_atoms: int = 7, seed: int = 0):
    """A small molecule-like system with all pairs as edges (E = N (N-1)), in the module's dtype."""
    p = next(iter(module.parameters()))
    gen = torch.Generator().manual_seed(seed)
    pos = (torch.rand(n_atoms, 3, generator=gen, dtype=torch.float64) * 2.5).to(dtype=p.dtype, device=p.device)
    numbers = torch.tensor([1, 6, 7, 8, 1, 6, 8][:n_atoms] + [1] * max(0, n_atoms - 7), device=p.device)
    ii, jj = torch.meshgrid(torch.arange(n_atoms), torch.arange(n_atoms), indexing="ij")
    keep = ii != jj
    edge_index = torch.stack([ii[keep], jj[keep]]).to(p.device)
    shifts = torch.zeros(edge_index.shape[1], 3, dtype=p.dtype, device=p.device)
    return pos, numbers, edge_index, shifts


class _Energy(torch.nn.Module):
    """Pins the call to the single-system path (batch=None)."""

    def __init__(self, module):
        super().__init__()
        self.m = module

    def forward(self, positions, numbers, edge_index, shifts):
        return self.m(positions, numbers, edge_index, shifts)


def capture(module: torch.nn.Module, example: Optional[tuple] = None) -> Captured:
    example = example if example is not None else example_inputs(module)
    n, e = Dim("n_atoms", min=2), Dim("n_edges", min=2)
    wrapper = _Energy(module)
    ep = export(wrapper, example, dynamic_shapes=({0: n}, {0: n}, {1: e}, {0: e}), strict=False)
    gm = ep.graph_module
    inputs, constants = [], {}
    user_names = iter(USER_INPUTS)
    for spec in ep.graph_signature.input_specs:
        node = spec.arg.name
        if spec.kind == InputKind.PARAMETER:
            inputs.append(GraphInput("parameter", spec.target, node))
        elif spec.kind == InputKind.BUFFER:
            inputs.append(GraphInput("buffer", spec.target, node))
            constants[node] = wrapper.get_buffer(spec.target).detach()
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            inputs.append(GraphInput("constant", spec.target, node))
            constants[node] = ep.constants[spec.target].detach()
        elif spec.kind == InputKind.USER_INPUT:
            inputs.append(GraphInput("user", next(user_names), node))
        else:
            raise NotImplementedError(f"unsupported graph input kind {spec.kind}")
    return Captured(gm=gm, inputs=inputs, module=wrapper, constants=constants)
