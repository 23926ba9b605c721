"""``painnfx inspect``: run the optimize pipeline on a model and show what it did.

Prints the pass report (what matched, which constants, what was fused or rejected, node and
op counts before/after, estimated kernel launches for energy+forces), optionally the graphs
as code, writes Graphviz files with the matched regions highlighted (SVG/PNG when the
``dot`` program is installed), and ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from .usage import UsageError, read_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="painnfx checkpoint (default: the built-in default model)")
    src.add_argument("--schnetpack", metavar="FILE",
                     help="a schnetpack model saved with torch.save (a pickle: needs --allow-pickle)")
    src.add_argument("--random", metavar="JSON", help='random PaiNN with this config, e.g. \'{"radial_basis": "bessel"}\'')
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow unpickling a schnetpack model file (runs code from the file: only for files you trust)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="precision the model is optimized in")
    p.add_argument("--backend", default="auto",
                   help="fused-op backend to verify the rewrites on (auto: the dispatcher's choice per device)")
    p.add_argument("--graphs", action="store_true", help="print the graph before and after as code")
    p.add_argument("--dot", metavar="STEM", help="write STEM_before.dot/STEM_after.dot (+ .svg/.png with graphviz)")
    p.add_argument("--format", nargs="*", default=["svg", "png"], help="rendered formats when graphviz is installed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--measure", action="store_true",
                   help="run the auto path rule on a 3-atom and a 50-atom cluster (energy and forces) and report "
                        "which path answered (fused graph or compiled forces graph) from which call")
    p.add_argument("--joint", action="store_true",
                   help="trace the joint forward+backward graph (energy and forces, no autograd engine) of the plain "
                        "and the optimized model and report their node counts and fused nodes")


def load_model(args):
    dtype = getattr(torch, args.dtype)
    if args.schnetpack:
        if not args.allow_pickle:
            raise UsageError("schnetpack model files are pickles that run code when loaded; "
                             "pass --allow-pickle if you trust this file")
        from painnfx.rewriter.adapters import import_schnetpack

        import_schnetpack()
        model = torch.load(args.schnetpack, map_location="cpu", weights_only=False)
        return model.to(dtype)
    if args.random:
        from painnfx.model.default import random_model

        config = read_json(args.random, "--random")
        try:
            return random_model(**config).to(dtype)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--random: not a PaiNN config ({exc})") from None
    if args.checkpoint:
        from painnfx.model.checkpoint import load_checkpoint

        return load_checkpoint(args.checkpoint).to(dtype)
    from painnfx.model.default import default_model

    return default_model().to(dtype)


def measure_paths(fast, model) -> None:
    """Calls the optimized model with the auto path rule on two cluster sizes (energy and forces);
    the report records which path answered from which call (optimized_model.PATH_RULE)."""
    import numpy as np

    from painnfx.model.neighbors import neighbor_list
    from painnfx.model.properties import compute_properties

    p = next(model.parameters())
    elements = getattr(getattr(model, "config", None), "elements", None) or [1]
    rng = np.random.default_rng(0)
    fast.path = "auto"
    for n, box in ((3, 2.0), (50, 9.0)):
        pos = [rng.random(3) * box]
        while len(pos) < n:
            q = rng.random(3) * box
            if min(np.linalg.norm(q - x) for x in pos) > 1.6:
                pos.append(q)
        pos = np.array(pos)
        nl = neighbor_list(pos, float(model.cutoff), np.zeros((3, 3)), [False] * 3, dtype=p.dtype, device=p.device)
        numbers = torch.full((n,), int(elements[0]), device=p.device)
        compute_properties(fast, torch.as_tensor(pos, dtype=p.dtype, device=p.device), numbers, nl.edge_index,
                           nl.shifts)


def trace_joint_graphs(fast, model) -> None:
    """Node counts of the energy+forces joint graphs of the plain and the optimized model, traced
    (not compiled) with symbolic sizes, into ``report.joint["traced"]``."""
    from painnfx.model.properties import derive_properties
    from painnfx.rewriter.joint import node_counts, trace, trace_example

    p = next(model.parameters())
    elements = getattr(getattr(model, "config", None), "elements", None) or [1]
    empty = torch.zeros(0, 3, dtype=p.dtype, device=p.device)
    example = trace_example(empty, torch.full((1,), int(elements[0]), device=p.device),
                            torch.zeros(2, 0, dtype=torch.long, device=p.device), empty)

    def graph_of(energy):
        def fn(positions, numbers, edge_index, shifts):
            out = derive_properties(energy, positions, numbers, edge_index, shifts, None, False, False, None, 1)
            return out.energy, out.forces

        return node_counts(trace(fn, *example, backend=fast.runner.backend), fast.runner.backend)

    plain = graph_of(model)
    fused = graph_of(lambda *a: fast._fused(*a, None, 1))
    fast.report.joint["traced"] = {"plain_nodes": plain["nodes"], "optimized_nodes": fused["nodes"],
                                   "fused": fused["fused"], "native": fused["native"]}


def main_inspect(args) -> int:
    from painnfx.rewriter import optimize
    from painnfx.rewriter.optimize import NothingRewrittenWarning

    model = load_model(args)
    with warnings.catch_warnings():  # the report below says why, when nothing was rewritten
        warnings.simplefilter("ignore", NothingRewrittenWarning)
        fast = optimize(model, backend=args.backend)
    report = fast.report
    if args.measure and fast.applied:
        measure_paths(fast, model)
    if args.joint and fast.applied:
        trace_joint_graphs(fast, model)
    written = []
    if args.dot:
        from .graphviz import write_graphs

        written = write_graphs(report, Path(args.dot), tuple(args.format))
    if args.json:
        d = report.to_dict(graphs=args.graphs)
        d["files"] = [str(w) for w in written]
        json.dump(d, sys.stdout, indent=2)
        print()
        return 0
    print(report.to_text())
    if args.graphs:
        print("\n# graph before\n" + report.graph_before)
        print("\n# graph after\n" + report.graph_after)
    for w in written:
        print(f"wrote {w}")
    return 0
