"""``painnfx precision``: the force error of bf16 filter products against float64, the accuracy gate
a reduced-precision filter must pass before it could be offered.

What is measured: the arithmetic of a filter kernel that reads the filter weights and the basis
values (phi and phi') in bfloat16 and sums their products in float32, with everything else in
float32 (the bias, the cutoff, the messages, the update blocks). It is emulated exactly where it
matters: the fused graph runs on the reference kernels with the filter weights and the basis
values rounded to bfloat16 (the order of the float32 sums differs from a vdpbf16ps kernel's, a
float32 rounding). Against: the plain model in float64 with the original weights. Also reported:
float32 everywhere (the C++ kernels), for scale.

Sets: the standard set's molecules and Cu500 on the bench's model (seed 0, default size, random
weights), and held-out structures (a seed the training never saw) on the built-in default model.
The gate (max <= 1 meV/A, mean <= 0.2 meV/A over all force components) is printed with the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

GATE_MAX_MEV, GATE_MEAN_MEV = 1.0, 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--systems", nargs="*", default=["H2O", "CH4", "benzene", "C16H34", "Cu500"],
                   help="standard-set systems, on the bench's model")
    p.add_argument("--held-out", type=int, default=24, help="held-out Cu structures on the default model")
    p.add_argument("--seed", type=int, default=777, help="seed of the held-out structures")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default=None, help="write the result as JSON here (written whole, then renamed)")


def _bf16(t):
    return None if t is None else t.to(torch.bfloat16).to(t.dtype)


@contextlib.contextmanager
def bf16_basis():
    """The reference kernels' basis values (phi and phi') rounded to bfloat16 while the block runs."""
    from painnfx.ops import reference

    plain = reference.basis_values

    def rounded(d, name, params, derivative=True):
        phi, dphi = plain(d, name, params, derivative)
        return _bf16(phi), _bf16(dphi)

    reference.basis_values = rounded
    try:
        yield
    finally:
        reference.basis_values = plain


def _copy(model, dtype):
    """``model`` in ``dtype``, a copy of its own (the bf16 variant rounds its filter weights)."""
    m = type(model)(model.config)
    m.load_state_dict(model.state_dict())
    m = m.to(dtype).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _variants(model) -> dict:
    """{name: (dtype, forces(positions, numbers, edge_index, shifts))}: the float64 reference, float32 on
    the C++ kernels, and the bf16 filters; each model built once for all structures."""
    from painnfx.model.properties import compute_properties
    from painnfx.ops import use_backend
    from painnfx.rewriter import optimize

    plain = _copy(model, torch.float64)
    fp32 = optimize(_copy(model, torch.float32))
    rounded = _copy(model, torch.float32)
    rounded.filter_net.weight.copy_(_bf16(rounded.filter_net.weight))
    bf16 = optimize(rounded, verify=False)  # verification would compare against the unrounded model

    def bf16_forces(*args):
        with bf16_basis(), use_backend("reference"):
            return compute_properties(bf16, *args).forces

    return {"float64": (torch.float64, lambda *args: compute_properties(plain, *args).forces),
            "float32": (torch.float32, lambda *args: compute_properties(fp32, *args).forces),
            "bf16-filters": (torch.float32, bf16_forces)}


def errors(model, structures) -> dict:
    """{variant: {max_meV_A, mean_meV_A}} of float32 and bf16 filters against float64."""
    from painnfx.model.neighbors import neighbor_list

    variants = _variants(model)
    diffs = {"float32": [], "bf16-filters": []}
    for atoms in structures:
        nl = neighbor_list(atoms.positions, model.cutoff, atoms.cell.array, atoms.pbc)
        forces = {}
        for name, (dtype, run) in variants.items():
            forces[name] = run(torch.tensor(atoms.positions, dtype=dtype), torch.tensor(atoms.numbers),
                               nl.edge_index, nl.shifts.to(dtype)).double()
        for name in diffs:
            diffs[name].append((forces[name] - forces["float64"]).abs().flatten())
    out = {}
    for name, d in diffs.items():
        d = torch.cat(d)
        out[name] = {"max_meV_A": 1e3 * float(d.max()), "mean_meV_A": 1e3 * float(d.mean())}
        out[name]["passes_gate"] = out[name]["max_meV_A"] <= GATE_MAX_MEV and out[name]["mean_meV_A"] <= GATE_MEAN_MEV
    return out


def main_precision(args) -> int:
    from painnfx.model.default import default_model, random_model

    from painnfx.model.files import replaced_when_complete

    from .dataset import generate
    from .flops import cpuinfo
    from .systems import system

    torch.set_num_threads(args.threads)
    report = {"gate": {"max_meV_A": GATE_MAX_MEV, "mean_meV_A": GATE_MEAN_MEV},
              "machine": cpuinfo("model name"), "torch": torch.__version__, "sets": {}}
    if args.systems:
        report["sets"]["standard set, bench model"] = errors(random_model(0), [system(s) for s in args.systems])
    if args.held_out:
        held = [s.atoms for s in generate(args.held_out, args.seed, ("Cu",))]
        report["sets"][f"{args.held_out} held-out Cu structures, default model"] = errors(default_model(), held)
    for name, res in report["sets"].items():
        for variant, e in res.items():
            print(f"{name}: {variant}: max {e['max_meV_A']:.3g} meV/A, mean {e['mean_meV_A']:.3g} meV/A "
                  f"({'passes' if e['passes_gate'] else 'fails'} the gate)")
    if args.out:
        with replaced_when_complete(args.out) as fh:
            fh.write(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(main_precision(parser.parse_args()))
