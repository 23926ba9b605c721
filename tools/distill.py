"""``painnfx distill``: train a PaiNN student on energies and forces of an EMT teacher.

Deterministic for a given seed (data, split, initialisation, batch order). Writes a
checkpoint whose metadata records the data, the seed, the hyperparameters and the
validation errors, including the errors on a small fixed "check set" that the test suite
recomputes from the shipped file.

Reproduce the shipped default model (painnfx/model/data/default_cu.pt):

    painnfx distill --out model/data/default_cu.pt          # the defaults below, seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .usage import non_negative_float, positive_float, positive_int

CHECK_SET = dict(n=6, seed=12345)


def to_tensors(samples, cutoff: float, dtype: torch.dtype):
    """Concatenate samples into one batched graph."""
    from painnfx.model.neighbors import neighbor_list

    pos, num, ei, sh, batch, e, f, natoms = [], [], [], [], [], [], [], []
    offset = 0
    for k, s in enumerate(samples):
        nl = neighbor_list(s.atoms.positions, cutoff, s.atoms.cell.array, s.atoms.pbc, dtype=dtype)
        pos.append(torch.tensor(s.atoms.positions, dtype=dtype))
        num.append(torch.tensor(s.atoms.numbers))
        ei.append(nl.edge_index + offset)
        sh.append(nl.shifts)
        batch.append(torch.full((len(s.atoms),), k))
        e.append(s.energy)
        f.append(torch.tensor(s.forces, dtype=dtype))
        natoms.append(len(s.atoms))
        offset += len(s.atoms)
    return dict(positions=torch.cat(pos), numbers=torch.cat(num), edge_index=torch.cat(ei, 1), shifts=torch.cat(sh),
                batch=torch.cat(batch), n_systems=len(samples), energy=torch.tensor(e, dtype=dtype),
                forces=torch.cat(f), n_atoms=torch.tensor(natoms, dtype=dtype))


def predict(model, data, create_graph: bool):
    from painnfx.model.properties import compute_properties

    out = compute_properties(model, data["positions"], data["numbers"], data["edge_index"], data["shifts"],
                             create_graph=create_graph, batch=data["batch"], n_systems=data["n_systems"])
    return out.energy, out.forces


def training_loss(model, data, force_weight: float) -> torch.Tensor:
    """Mean squared energy-per-atom error + ``force_weight`` x mean squared force error (the
    forces keep their graph: the loss differentiates through them, a double backward)."""
    e, f = predict(model, data, create_graph=True)
    loss_e = (((e - data["energy"]) / data["n_atoms"]) ** 2).mean()
    loss_f = ((f - data["forces"]) ** 2).mean()
    return loss_e + force_weight * loss_f


def errors(model, samples, cutoff, dtype, chunk: int = 8) -> dict:
    """Energy MAE (meV/atom), force MAE (meV/A) and, for periodic cells, stress MAE (meV/A^3)."""
    from painnfx.model.neighbors import neighbor_list
    from painnfx.model.properties import compute_properties, voigt

    e_err, f_err, s_err = [], [], []
    for k in range(0, len(samples), chunk):
        part = samples[k:k + chunk]
        data = to_tensors(part, cutoff, dtype)
        e, f = predict(model, data, create_graph=False)
        e_err += ((e - data["energy"]).abs() / data["n_atoms"]).tolist()
        f_err.append((f - data["forces"]).abs().reshape(-1))
    for s in samples:
        if s.stress is None:
            continue
        nl = neighbor_list(s.atoms.positions, cutoff, s.atoms.cell.array, s.atoms.pbc, dtype=dtype)
        out = compute_properties(model, torch.tensor(s.atoms.positions, dtype=dtype), torch.tensor(s.atoms.numbers),
                                 nl.edge_index, nl.shifts, torch.tensor(s.atoms.cell.array, dtype=dtype), stress=True)
        s_err.append(np.abs(voigt(out.stress) - s.stress).mean())
    return {
        "energy_mae_meV_per_atom": 1000 * float(np.mean(e_err)),
        "force_mae_meV_per_A": 1000 * float(torch.cat(f_err).mean()),
        "stress_mae_meV_per_A3": 1000 * float(np.mean(s_err)) if s_err else None,
        "n_structures": len(samples),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--elements", nargs="+", default=["Cu"], help="EMT elements; the first is the fcc host")
    p.add_argument("--n-train", type=positive_int, default=400, help="training structures")
    p.add_argument("--n-val", type=positive_int, default=60, help="held-out validation structures")
    p.add_argument("--seed", type=int, default=0, help="seed of the structures and of the initial weights")
    p.add_argument("--features", type=positive_int, default=128, help="PaiNN feature width F")
    p.add_argument("--interactions", type=positive_int, default=3, help="PaiNN interaction layers L")
    p.add_argument("--rbf", type=positive_int, default=20, help="radial basis functions K")
    p.add_argument("--cutoff", type=positive_float, default=5.0, help="cutoff radius, Angstrom")
    p.add_argument("--batch-size", type=positive_int, default=4, help="structures per optimizer step")
    p.add_argument("--epochs", type=positive_int, default=40, help="passes over the training set")
    p.add_argument("--max-minutes", type=positive_float, default=240.0,
                   help="safety stop after this wall time (recorded; makes the run depend on timing)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--force-weight", type=non_negative_float, default=10.0,
                   help="weight of the force loss against the energy loss")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    p.add_argument("--optimized", action="store_true", help="train through optimize() (fused ops, double backward)")
    p.add_argument("--out", default="painnfx_out/distilled.pt", help="checkpoint to write (replaced when complete)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main_distill(args) -> int:
    from tqdm import tqdm

    from painnfx.model.checkpoint import save_checkpoint
    from painnfx.model.painn import PaiNN, PaiNNConfig

    from .dataset import check_elements, generate
    from .usage import UsageError, output_file

    try:
        check_elements(tuple(args.elements))
    except ValueError as exc:
        raise UsageError(f"--elements {' '.join(args.elements)}: {exc}") from None
    for name in ("n_train", "n_val", "epochs", "batch_size", "threads", "features", "interactions", "rbf"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    output_file(args.out, "--out")
    torch.set_num_threads(args.threads)
    dtype = torch.float32
    t0 = time.time()
    samples = generate(args.n_train + args.n_val, args.seed, tuple(args.elements))
    train, val = samples[: args.n_train], samples[args.n_train:]
    check = generate(CHECK_SET["n"], CHECK_SET["seed"], tuple(args.elements))
    if not args.quiet:
        print(f"generated {len(samples)} EMT structures in {time.time() - t0:.1f} s")

    from ase.data import atomic_numbers

    elements = sorted({atomic_numbers[e] for e in args.elements})
    config = PaiNNConfig(n_atom_basis=args.features, n_interactions=args.interactions, n_rbf=args.rbf,
                         cutoff=args.cutoff, elements=elements, seed=args.seed)
    model = PaiNN(config).to(dtype)
    per_atom = np.array([s.energy / len(s.atoms) for s in train])
    with torch.no_grad():  # per-atom energy offset: the student learns deviations from the mean
        model.energy_shift.fill_(float(per_atom.mean()))
    trainer = model
    if args.optimized:
        from painnfx.rewriter import optimize

        trainer = optimize(model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    bar = tqdm(total=total, desc="distill", unit="step", disable=args.quiet)
    stopped_early = False
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for k in range(0, len(order), args.batch_size):
            data = to_tensors([train[i] for i in order[k:k + args.batch_size]], args.cutoff, dtype)
            loss = training_loss(trainer, data, args.force_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if time.time() - t0 > 60 * args.max_minutes:
                stopped_early = True
                break
        val_err = errors(model, val, args.cutoff, dtype)
        history.append({"epoch": epoch + 1, **val_err})
        if not args.quiet:
            tqdm.write(f"epoch {epoch + 1}: val E {val_err['energy_mae_meV_per_atom']:.2f} meV/atom, "
                       f"F {val_err['force_mae_meV_per_A']:.1f} meV/A")
        if stopped_early:
            break
    bar.close()
    model.eval()
    metadata = {
        "teacher": "ase.calculators.emt.EMT",
        "elements": args.elements,
        "seed": args.seed,
        "n_train": len(train),
        "n_val": len(val),
        "hyperparameters": {k: getattr(args, k) for k in ("batch_size", "epochs", "lr", "force_weight", "optimized")},
        "validation": errors(model, val, args.cutoff, dtype),
        "check_set": dict(CHECK_SET, elements=args.elements, **errors(model, check, args.cutoff, dtype)),
        "history": history,
        "train_seconds": round(time.time() - t0, 1),
        "stopped_early": stopped_early,
        "command": "painnfx distill " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                 if k in ("seed", "n_train", "n_val", "epochs", "batch_size")),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, metadata)
    print(json.dumps({"checkpoint": str(out), "validation": metadata["validation"],
                      "check_set": metadata["check_set"], "train_seconds": metadata["train_seconds"]}, indent=2))
    return 0
