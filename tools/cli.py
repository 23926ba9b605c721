"""The ``painnfx`` command: one entry point with subcommands."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import bench, distill, inspect_cmd, lammps_cmd, md

    parser = argparse.ArgumentParser(
        prog="painnfx",
        description="Fast PaiNN potentials: benchmarks, molecular dynamics and graph inspection.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("md", help="run MD with the default model through the ASE calculator",
                       description=md.__doc__)
    md.add_arguments(p)
    p.set_defaults(func=md.main_md)
    p = sub.add_parser("bench", help="time energy+forces of eager, torch.compile, schnetpack, ... side by side",
                       description=bench.__doc__)
    bench.add_arguments(p)
    p.set_defaults(func=bench.main_bench)
    p = sub.add_parser("distill", help="train a PaiNN student on an EMT teacher (energies, forces)",
                       description=distill.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_arguments(p)
    p.set_defaults(func=distill.main_distill)
    p = sub.add_parser("inspect", help="show what optimize() matches, fuses and rejects in a model",
                       description=inspect_cmd.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect_cmd.add_arguments(p)
    p.set_defaults(func=inspect_cmd.main_inspect)
    p = sub.add_parser("lammps", help="run painnfx models in LAMMPS on MPI ranks (ML-IAP)",
                       description=lammps_cmd.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    lammps_cmd.add_arguments(p)
    return parser


def main(argv=None) -> int:
    from .allocator import tune_malloc

    tune_malloc()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
