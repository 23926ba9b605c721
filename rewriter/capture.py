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

import torch
import torch.fx as fx
from torch.export import Dim, export
from torch.export.graph_signature import InputKind

from .probes import random_system


@dataclass
class GraphInput:
    kind: str  # "parameter" | "buffer" | "constant" | "user"
    name: str  # parameter/buffer FQN, or the user argument's name
    node: str  # placeholder name in the graph


@dataclass
class Captured:
    gm: fx.GraphModule
    inputs: list[GraphInput]
    constants: dict = field(default_factory=dict)  # placeholder name -> tensor (buffers, lifted constants)
    target: "Target" = None
    #: placeholders whose values a pass read as constants (folded, or compiled into a fused op): the
    #: optimized graph no longer follows a change of those buffers (runner.GraphRunner refuses one)
    read: set = field(default_factory=set)

    def static_arguments(self, detach: bool = False) -> tuple[list, list]:
        """(arguments, user slots): the graph's flat arguments with parameters, buffers and
        lifted constants resolved (live objects unless ``detach``), and (position, user name)
        for each slot a call fills in."""
        args, slots = [], []
        for k, gi in enumerate(self.inputs):
            if gi.kind == "user":
                args.append(None)
                slots.append((k, gi.name))
            elif gi.kind == "parameter":
                p = self.target.get_parameter(gi.name)
                args.append(p.detach() if detach else p)
            elif gi.kind == "buffer":
                b = self.target.get_buffer(gi.name)
                args.append(b.detach() if detach else b)
            else:
                args.append(self.constants[gi.node])
        return args, slots

    def arguments(self, user: dict, detach: bool = False) -> list:
        args, slots = self.static_arguments(detach)
        for k, name in slots:
            args[k] = user[name]
        return args


class Target(torch.nn.Module):
    """What gets captured: a module with tensor inputs ``names`` built from a system."""

    names: tuple = ()

    def user_inputs(self, positions, numbers, edge_index, shifts) -> dict:
        raise NotImplementedError

    def dynamic_shapes(self, n, e) -> tuple:
        raise NotImplementedError


class AtomicEnergies(Target):
    """Per-atom energies of a painnfx PaiNN: one graph serves single and batched calls."""

    names = ("positions", "numbers", "edge_index", "shifts")

    def __init__(self, model):
        super().__init__()
        self.m = model
        self.cutoff = float(model.cutoff)

    def forward(self, positions, numbers, edge_index, shifts):
        return self.m.atomic_energies(positions, numbers, edge_index, shifts)

    def user_inputs(self, positions, numbers, edge_index, shifts):
        return dict(positions=positions, numbers=numbers, edge_index=edge_index, shifts=shifts)

    def dynamic_shapes(self, n, e):
        return ({0: n}, {0: n}, {1: e}, {0: e})


class TotalEnergy(AtomicEnergies):
    """Any module with the painnfx energy signature (single-system path)."""

    def forward(self, positions, numbers, edge_index, shifts):
        return self.m(positions, numbers, edge_index, shifts)


class SchnetpackRepresentation(Target):
    """A schnetpack PaiNN representation as (r_ij, Z, idx_i, idx_j) -> (q, mu)."""

    names = ("r_ij", "numbers", "idx_i", "idx_j")

    def __init__(self, representation):
        super().__init__()
        from .adapters import import_schnetpack

        self.m = representation
        self.keys = import_schnetpack().properties
        self.cutoff = float(representation.cutoff)

    def forward(self, r_ij, numbers, idx_i, idx_j):
        p = self.keys
        out = self.m({p.Z: numbers, p.Rij: r_ij, p.idx_i: idx_i, p.idx_j: idx_j})
        return out["scalar_representation"], out["vector_representation"]

    def user_inputs(self, positions, numbers, edge_index, shifts):
        r = positions[edge_index[1]] - positions[edge_index[0]] + shifts
        return dict(r_ij=r, numbers=numbers, idx_i=edge_index[0].contiguous(), idx_j=edge_index[1].contiguous())

    def dynamic_shapes(self, n, e):
        return ({0: e}, {0: n}, {0: e}, {0: e})


def capture(target: Target) -> Captured:
    p = next(iter(target.parameters()))
    user = target.user_inputs(*random_system(p.dtype, p.device))
    example = tuple(user[k] for k in target.names)
    n, e = Dim("n_atoms", min=2), Dim("n_edges", min=2)
    ep = export(target, example, dynamic_shapes=target.dynamic_shapes(n, e), strict=False)
    inputs, constants = [], {}
    user_names = iter(target.names)
    for spec in ep.graph_signature.input_specs:
        node = spec.arg.name
        if spec.kind == InputKind.PARAMETER:
            inputs.append(GraphInput("parameter", spec.target, node))
        elif spec.kind == InputKind.BUFFER:
            inputs.append(GraphInput("buffer", spec.target, node))
            constants[node] = target.get_buffer(spec.target).detach()
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            inputs.append(GraphInput("constant", spec.target, node))
            constants[node] = ep.constants[spec.target].detach()
        elif spec.kind == InputKind.USER_INPUT:
            inputs.append(GraphInput("user", next(user_names), node))
        else:
            raise NotImplementedError(f"unsupported graph input kind {spec.kind}")
    return Captured(gm=ep.graph_module, inputs=inputs, constants=constants, target=target)
