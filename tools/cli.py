"""The ``painnfx`` command: one entry point with subcommands."""

from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every subcommand's ``--help``: its description as written, and each flag's default unless the
    flag has none (an off switch, an optional file) or its help already states it."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from . import bench, distill, eval_cmd, inspect_cmd, lammps_cmd, longrun, md

    parser = argparse.ArgumentParser(
        prog="painnfx",
        description="Fast PaiNN potentials: benchmarks, molecular dynamics and graph inspection.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("md", help="run MD with the default model through the ASE calculator",
                       description=md.__doc__, formatter_class=HelpFormatter)
    md.add_arguments(p)
    p.set_defaults(func=md.main_md)
    p = sub.add_parser("eval", help="energy, forces and stress of every structure in a file, batched",
                       description=eval_cmd.__doc__, formatter_class=HelpFormatter)
    eval_cmd.add_arguments(p)
    p.set_defaults(func=eval_cmd.main_eval)
    p = sub.add_parser("bench", help="time energy+forces of eager, torch.compile, schnetpack, ... side by side",
                       description=bench.__doc__, formatter_class=HelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(func=bench.main_bench)
    p = sub.add_parser("distill", help="train a PaiNN student on an EMT teacher (energies, forces)",
                       description=distill.__doc__, formatter_class=HelpFormatter)
    distill.add_arguments(p)
    p.set_defaults(func=distill.main_distill)
    p = sub.add_parser("inspect", help="show what optimize() matches, fuses and rejects in a model",
                       description=inspect_cmd.__doc__, formatter_class=HelpFormatter)
    inspect_cmd.add_arguments(p)
    p.set_defaults(func=inspect_cmd.main_inspect)
    p = sub.add_parser("longrun", help="long NVE of the optimized and the plain calculator: drift, memory, compiles",
                       description=longrun.__doc__, formatter_class=HelpFormatter)
    longrun.add_arguments(p)
    p.set_defaults(func=longrun.main_longrun)
    p = sub.add_parser("lammps", help="run painnfx models in LAMMPS on MPI ranks (ML-IAP)",
                       description=lammps_cmd.__doc__, formatter_class=HelpFormatter)
    lammps_cmd.add_arguments(p)
    return parser


def main(argv=None) -> int:
    """Run one subcommand; bad input ends with one line on stderr and exit status 2."""
    from .allocator import tune_malloc
    from .usage import user_errors

    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as exc:
        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None:
            message = f"{exc.filename}: {exc.strerror or exc}"
        print(f"painnfx {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
