"""``painnfx export MODEL OUT``: the model file LAMMPS's C++ pair style ``painnfx`` reads.

  painnfx export default cu.pfx                      the built-in default Cu model, float64
  painnfx export my_model.pt my.pfx --dtype float32  a checkpoint

The file holds the weights, split per layer the way the pair style runs them, and metadata
(cutoff, elements, dtype, layer count, feature sizes, radial basis and cutoff function, painnfx and
torch versions, the fused ops' schemas and the path of painnfx's C++ library, built for this
machine if it is not yet). ``--plugin`` also builds the pair style for the LAMMPS that ``painnfx
lammps`` finds and prints the input lines (docs/lammps.md).
"""

from __future__ import annotations

import argparse
import json

from .dtypes import DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a painnfx checkpoint, or 'default' for the built-in default Cu model")
    p.add_argument("out", help="the model file to write (an existing one is replaced once the new one is complete)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64", help="floating-point precision of the run")
    p.add_argument("--plugin", action="store_true",
                   help="also build the pair style plugin for the LAMMPS `painnfx lammps` finds, and print the lines")
    p.add_argument("--types", nargs="+", default=None, help="with --plugin: the element of each atom type, in order")


def main_export(args) -> int:
    from painnfx.model.lammps_pair import export_model, export_with_plugin, lammps_lines

    from .lammps_cmd import find_lmp

    model = None if args.model == "default" else args.model
    if args.plugin:
        meta, plugin = export_with_plugin(args.out, model, DTYPES[args.dtype], find_lmp(), args.types or ())
    else:
        meta = export_model(args.out, model, DTYPES[args.dtype])
    shown = {k: meta[k] for k in ("dtype", "cutoff", "n_layers", "n_features", "symbols", "basis", "cutoff_fn",
                                  "painnfx_version", "torch_version", "cpu_library")}
    if len(shown["symbols"]) > 10:
        shown["symbols"] = f"{len(shown['symbols'])} elements"
    print(f"wrote {args.out}\n{json.dumps(shown, indent=2)}")
    if args.plugin:
        print("\ninput lines (after the box is created):\n" +
              "\n".join(lammps_lines(args.out, str(plugin), args.types or meta["symbols"][:1])))
    return 0
