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
    from . import bench, distill, eval_cmd, export_cmd, inspect_cmd, lammps_cmd, longrun, md, precision

    parser = argparse.ArgumentParser(
        prog="painnfx",
        description="Fast PaiNN potentials: benchmarks, molecular dynamics and graph inspection.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, summary in (
        ("md", md, "run MD with the default model through the ASE calculator"),
        ("eval", eval_cmd, "energy, forces and stress of every structure in a file, batched"),
        ("bench", bench, "time energy+forces of eager, torch.compile, schnetpack, ... side by side"),
        ("distill", distill, "train a PaiNN student on an EMT teacher (energies, forces)"),
        ("inspect", inspect_cmd, "show what optimize() matches, fuses and rejects in a model"),
        ("longrun", longrun, "long NVE of the optimized and the plain calculator: drift, memory, compiles"),
        ("lammps", lammps_cmd, "run painnfx models in LAMMPS on MPI ranks (pair_style painnfx or ML-IAP)"),
        ("export", export_cmd, "write the model file of LAMMPS's C++ pair style painnfx"),
        ("precision", precision, "force error of bf16 filter products against float64 (the accuracy gate)"),
    ):
        p = sub.add_parser(name, help=summary, description=module.__doc__, formatter_class=HelpFormatter)
        module.add_arguments(p)  # each sets its own ``func`` where it has one handler, else its subcommands do
        if hasattr(module, f"main_{name}"):
            p.set_defaults(func=getattr(module, f"main_{name}"))
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
