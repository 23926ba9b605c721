"""Convert PaiNN weights between schnetpack 2.x and painnfx, both ways.

painnfx's PaiNN uses schnetpack's parameter names for the representation, so the
conversion is a renaming of the energy head (``outnet`` <-> ``energy_head``) plus a check
that the schnetpack model is of the supported shape: PaiNN representation with a Gaussian
or Bessel basis, cosine cutoff, SiLU, no electronic embeddings, and an ``Atomwise`` sum
head with one hidden layer of F/2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from painnfx.ops.radial import basis_of_module
from painnfx.rewriter.adapters import import_schnetpack

from .painn import PaiNN, PaiNNConfig
from .radial import RADIAL_BASES


def from_schnetpack(nnpot, energy_key: str = "energy") -> PaiNN:
    """A painnfx PaiNN with the weights of a schnetpack ``NeuralNetworkPotential``."""
    spk = import_schnetpack()
    rep = nnpot.representation
    if not isinstance(rep, spk.representation.PaiNN):
        raise TypeError(f"representation is {type(rep).__name__}, expected schnetpack PaiNN")
    if len(rep.electronic_embeddings):
        raise ValueError("electronic embeddings (charge/spin) are not supported")
    if not isinstance(rep.embedding, torch.nn.Embedding):
        raise ValueError("only a plain nn.Embedding nuclear embedding is supported")
    cutoff_kinds = {spk.nn.CosineCutoff: "cosine", spk.nn.MollifierCutoff: "mollifier"}
    cutoff_fn = cutoff_kinds.get(type(rep.cutoff_fn))
    if cutoff_fn is None:
        raise ValueError(f"cutoff {type(rep.cutoff_fn).__name__} is not supported (CosineCutoff, MollifierCutoff)")
    if cutoff_fn == "mollifier" and abs(float(rep.cutoff_fn.eps) - 1e-7) > 1e-12:  # a float32 buffer
        raise ValueError(f"MollifierCutoff with eps={float(rep.cutoff_fn.eps)} is not supported (eps=1e-7 only)")
    rbf = rep.radial_basis
    try:
        kind, _ = basis_of_module(rbf)
    except TypeError as exc:
        raise ValueError(f"radial basis {type(rbf).__name__} is not supported") from exc
    if kind not in RADIAL_BASES:
        raise ValueError(f"radial basis {kind!r} has no painnfx PaiNN module")
    act = rep.interactions[0].interatomic_context_net[0].activation
    if act is not F.silu and not isinstance(act, torch.nn.SiLU):
        raise ValueError(f"activation {act} is not supported (SiLU only)")

    heads = [m for m in nnpot.output_modules if isinstance(m, spk.atomistic.Atomwise)]
    heads = [m for m in heads if m.output_key == energy_key]
    if len(heads) != 1:
        raise ValueError(f"expected one Atomwise module with output_key={energy_key!r}")
    head = heads[0]
    F_ = rep.n_atom_basis
    layers = list(head.outnet)
    if (
        head.aggregation_mode != "sum"
        or len(layers) != 2
        or layers[0].weight.shape != (max(1, F_ // 2), F_)
        or layers[1].weight.shape[0] != 1
    ):
        raise ValueError("energy head must be Atomwise(sum) with layers F -> F/2 -> 1")

    shared_interactions = rep.n_interactions > 1 and rep.interactions[0] is rep.interactions[1]
    config = PaiNNConfig(
        n_atom_basis=F_,
        n_interactions=rep.n_interactions,
        n_rbf=rbf.n_rbf,
        cutoff=float(rep.cutoff_fn.cutoff.item()),
        radial_basis=kind,
        cutoff_fn=cutoff_fn,
        shared_interactions=shared_interactions,
        shared_filters=bool(rep.share_filters),
        epsilon=float(rep.mixing[0].epsilon),
        max_z=rep.embedding.num_embeddings,
    )
    dtype = next(rep.parameters()).dtype
    model = PaiNN(config).to(dtype)
    state = {k: v for k, v in rep.state_dict().items()}
    for k, v in head.outnet.state_dict().items():
        state[f"energy_head.{k}"] = v
    for name in ("atomref", "energy_scale", "energy_shift"):
        state[name] = model.state_dict()[name]
    model.load_state_dict(state)
    return model


def to_schnetpack(model: PaiNN, energy_key: str = "energy", stress: bool = False):
    """A schnetpack ``NeuralNetworkPotential`` (energy + forces [+ stress]) with the same weights.

    Per-atom reference energies, scale and shift are not representable in the bare
    network and must be zero/one; use schnetpack's ``AddOffsets`` postprocessor otherwise.
    """
    spk = import_schnetpack()
    cfg = model.config
    if bool(model.atomref.abs().max() > 0) or float(model.energy_scale) != 1.0 or float(model.energy_shift) != 0.0:
        raise ValueError("model has atomref/scale/shift; schnetpack expresses those as postprocessors")
    rbf = getattr(spk.nn, type(model.radial_basis).__name__)(n_rbf=cfg.n_rbf, cutoff=cfg.cutoff)
    rep = spk.representation.PaiNN(
        n_atom_basis=cfg.n_atom_basis,
        n_interactions=cfg.n_interactions,
        radial_basis=rbf,
        cutoff_fn={"cosine": spk.nn.CosineCutoff, "mollifier": spk.nn.MollifierCutoff}[cfg.cutoff_fn](cfg.cutoff),
        shared_interactions=cfg.shared_interactions,
        shared_filters=cfg.shared_filters,
        epsilon=cfg.epsilon,
        nuclear_embedding=torch.nn.Embedding(cfg.max_z, cfg.n_atom_basis),
    )
    head = spk.atomistic.Atomwise(n_in=cfg.n_atom_basis, output_key=energy_key)
    input_modules = [spk.atomistic.PairwiseDistances()]
    if stress:
        input_modules.insert(0, spk.atomistic.Strain())
    nnpot = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=input_modules,
        output_modules=[
            head,
            spk.atomistic.Forces(energy_key=energy_key, force_key="forces", calc_stress=stress),
        ],
    )
    nnpot = nnpot.to(next(model.parameters()).dtype)
    state = model.state_dict()
    rep.load_state_dict({k: v for k, v in state.items() if not k.startswith(("energy_head.", "atomref", "energy_"))})
    head.outnet.load_state_dict({k[len("energy_head."):]: v for k, v in state.items() if k.startswith("energy_head.")})
    return nnpot


def schnetpack_inputs(positions, numbers, edge_index, cell_shifts, cell, pbc, stress: bool = False):
    """schnetpack's input dict for one system with a precomputed neighbor list."""
    spk = import_schnetpack()
    p = spk.properties
    dtype = positions.dtype
    cell = torch.as_tensor(cell, dtype=dtype)
    inputs = {
        p.Z: numbers,
        p.R: positions.detach().clone(),
        p.cell: cell[None],
        p.pbc: torch.as_tensor(pbc, dtype=torch.bool).reshape(1, 3) if not isinstance(pbc, bool) else torch.tensor([[pbc] * 3]),
        p.idx_i: edge_index[0],
        p.idx_j: edge_index[1],
        p.offsets: cell_shifts.to(dtype) @ cell,
        p.idx_m: torch.zeros(len(numbers), dtype=torch.long),
        p.n_atoms: torch.tensor([len(numbers)]),
    }
    return inputs


__all__ = ["from_schnetpack", "to_schnetpack", "import_schnetpack", "schnetpack_inputs"]
