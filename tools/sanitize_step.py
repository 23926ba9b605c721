"""A small forward + backward through every CUDA kernel, for compute-sanitizer (tools/gpu_check.sh):
a 20-atom periodic Cu cell, the default-size model, energy, forces and filter-weight gradients."""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    from ase.build import bulk

    from painnfx.model.default import random_model
    from painnfx.model.neighbors import neighbor_list
    from painnfx.model.properties import compute_properties
    from painnfx.rewriter import optimize

    device = torch.device(args.device)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=0)
    model = random_model(0).to(device)
    fast = optimize(model)
    nl = neighbor_list(atoms.positions, model.cutoff, atoms.cell.array, atoms.pbc, dtype=torch.float32, device=device)
    pos = torch.as_tensor(atoms.positions, dtype=torch.float32, device=device)
    numbers = torch.as_tensor(atoms.numbers, device=device)
    out = compute_properties(fast, pos, numbers, nl.edge_index, nl.shifts)  # forward + dL/dr kernels
    energy = fast(pos, numbers, nl.edge_index, nl.shifts).sum()
    grads = torch.autograd.grad(energy, [p for p in model.parameters() if p.requires_grad])  # weight-gradient kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"energy {float(out.energy.sum()):.6f} eV, max |F| {float(out.forces.abs().max()):.4f} eV/A, "
          f"{len(grads)} parameter gradients, device {device}")


if __name__ == "__main__":
    main()
