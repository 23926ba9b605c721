"""``painnfx lammps``: run painnfx models inside LAMMPS, through either pair style:
``painnfx`` (C++ plugin, per-layer ghost exchange, no Python in the MD process; the default) or
``mliap`` (ML-IAP's ``pair_style mliap unified``, the model in LAMMPS's embedded Python).

  painnfx lammps build                 build LAMMPS (ML-IAP + PYTHON + PLUGIN + MPI) into a cache, once
  painnfx lammps export --out cu.pfx   write the model file and the input lines that load it
  painnfx lammps run -np 2             NVE MD of Cu with the default model on 2 MPI ranks
  painnfx lammps bench                 both pair styles side by side on 1 and 2 ranks

Which LAMMPS: $PAINNFX_LMP (your own build: ML-IAP, PYTHON, MLIAP_ENABLE_PYTHON=yes, MPI), else
the one ``painnfx lammps build`` cached for this Python, else ``lmp`` on PATH. The ``lammps``
Python module that build of LAMMPS comes with must be importable by this Python.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

from .dtypes import DTYPES
from .usage import MissingProgram, UsageError, check_device, non_negative_float, positive_int, write_text

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "lammps" / "in.cu_nve.lammps"
BUILD_SCRIPT = HERE / "lammps_build.sh"


class LammpsNotFound(MissingProgram):
    """No LAMMPS with ML-IAP + PYTHON was found."""


def cache_root() -> Path:
    """Where ``tools/lammps_build.sh`` puts its builds: ``<painnfx cache>/lammps``."""
    from painnfx.ops.build_cache import cache_root as painnfx_cache

    return painnfx_cache() / "lammps"


def find_lmp() -> str:
    """The LAMMPS executable to run (see the module docstring for the order)."""
    env = os.environ.get("PAINNFX_LMP")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise LammpsNotFound(f"PAINNFX_LMP={env} is not an executable file")
        return env
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    built = [Path(p) for p in glob.glob(str(cache_root() / f"*-{tag}" / "bin" / "lmp"))
             if (Path(p).parent.parent / ".complete").is_file()]
    if built:  # the latest build (a newer patch level is a new directory)
        return str(max(built, key=lambda p: (p.parent.parent / ".complete").stat().st_mtime))
    on_path = shutil.which("lmp")
    if on_path:
        return on_path
    raise LammpsNotFound("no LAMMPS found: run `painnfx lammps build` (bash tools/lammps_build.sh), or set "
                         "PAINNFX_LMP to an lmp built with ML-IAP, PYTHON, MLIAP_ENABLE_PYTHON=yes and MPI")


def find_lmp_or(default: str) -> str:
    try:
        return find_lmp()
    except LammpsNotFound:
        return default


def find_mpirun() -> str:
    for name in ("mpirun.mpich", "mpirun", "mpiexec"):
        path = shutil.which(name)
        if path:
            return path
    raise LammpsNotFound("no mpirun on PATH (painnfx lammps build installs MPICH)")


def lammps_env(threads: int | None = None) -> dict:
    """Environment for ``lmp``: its embedded Python must import painnfx, torch and lammps
    from this Python's environment (a virtual environment's site-packages included)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.insert(0, env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


PAIR_STYLES = ("painnfx", "mliap")


def model_file(folder: Path, pair_style: str) -> str:
    """Where a command that writes the model file into ``folder`` puts it."""
    return str(folder / ("model.pfx" if pair_style == "painnfx" else "model.pkl"))


def export(out: str, checkpoint=None, types=("Cu",), dtype=torch.float64, device="cpu", optimize="auto",
           skin: float = 2.0, pair_style: str = "mliap") -> tuple:
    """Write the model file ``out`` and ``out + '.lammps'`` (the lines to ``include``);
    returns (model file, lines file, lines). ``pair_style``: "mliap" (``optimize``: "auto", "fused"
    (or True), "off" (or False)) or "painnfx" (the C++ plugin, built here if it is not yet; CPU)."""
    if pair_style == "painnfx":
        return export_pair(out, checkpoint, types, dtype, device, skin)
    if pair_style != "mliap":
        raise ValueError(f"pair_style must be one of {PAIR_STYLES}, got {pair_style!r}")
    from painnfx.model.lammps_mliap import PaiNNMLIAP

    optimize = {"fused": True, "off": False}.get(optimize, optimize) if isinstance(optimize, str) else optimize
    adapter = PaiNNMLIAP(checkpoint, dtype=dtype, device=device, optimize=optimize, skin=skin)
    out = os.path.abspath(out)
    adapter.save(out)
    lines = adapter.lammps_lines(list(types), out)
    header = [f"# painnfx PaiNN for LAMMPS: {adapter.n_layers} message layers, cutoff {adapter.cutoff:g} A,",
              f"# ghost shell {adapter.comm_cutoff:g} A (L * r_c + skin); include after the box is created."]
    lines_file = out + ".lammps"
    write_text(Path(lines_file), "\n".join(header + lines) + "\n")
    return out, lines_file, lines


def export_pair(out: str, checkpoint=None, types=("Cu",), dtype=torch.float64, device="cpu",
                skin: float = 2.0) -> tuple:
    """``export`` for ``pair_style painnfx``: the model file, the plugin (built for the LAMMPS
    ``find_lmp`` finds, cached) and the lines."""
    from painnfx.model.lammps_pair import export_with_plugin, lammps_lines

    if str(device) != "cpu":
        raise UsageError("pair_style painnfx runs on the CPU (its CUDA build is not written yet); "
                         "use --pair-style mliap for CUDA")
    out = os.path.abspath(out)
    meta, plugin = export_with_plugin(out, checkpoint, dtype, find_lmp(), types)
    lines = [f"neighbor {skin:g} bin", *lammps_lines(out, str(plugin), list(types))]
    header = [f"# painnfx PaiNN for LAMMPS (pair_style painnfx): {meta['n_layers']} message layers, cutoff "
              f"{meta['cutoff']:g} A, ghost shell r_c + skin; include after the box is created."]
    lines_file = out + ".lammps"
    write_text(Path(lines_file), "\n".join(header + lines) + "\n")
    return out, lines_file, lines


PERF = re.compile(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")


def run_lammps(input_file: str, variables: dict, nprocs: int = 1, cwd: str = ".", threads: int | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``mpirun -np nprocs lmp -in input_file -var k v ...`` in ``cwd``; output in .stdout."""
    cmd = [find_mpirun(), "-np", str(nprocs), find_lmp(), "-nocite", "-in", str(input_file)]
    for k, v in variables.items():
        cmd += ["-var", str(k), str(v)]
    return subprocess.run(cmd, cwd=cwd, env=lammps_env(threads), capture_output=True, text=True, timeout=timeout)


def loop_performance(stdout: str) -> dict | None:
    """Seconds, ranks, steps, atoms and steps/s of the last ``run`` in a LAMMPS log."""
    found = PERF.findall(stdout)
    if not found:
        return None
    seconds, procs, steps, atoms = found[-1]
    seconds, steps = float(seconds), int(steps)
    return {"seconds": seconds, "ranks": int(procs), "steps": steps, "atoms": int(atoms),
            "steps_per_s": steps / seconds if seconds > 0 else float("inf")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="lammps_command", required=True)
    kind = dict(formatter_class=p.formatter_class)  # the command line's (defaults shown)
    b = sub.add_parser("build", **kind, help="build LAMMPS with ML-IAP + PYTHON + MPI into a cache (once)")
    b.set_defaults(func=main_build)
    e = sub.add_parser("export", **kind, help="write a model file for a pair style, and its input lines")
    _model_arguments(e)
    _pair_style_argument(e)
    e.add_argument("--out", default="painnfx_out/lammps/model.pfx", help="model file (the lines go to OUT.lammps)")
    e.set_defaults(func=main_export)
    r = sub.add_parser("run", **kind, help="MD in LAMMPS on N MPI ranks (default: the Cu NVE example)")
    _model_arguments(r)
    _pair_style_argument(r)
    r.add_argument("-np", "--nprocs", type=positive_int, default=2, help="MPI ranks")
    r.add_argument("--input", help="LAMMPS input (default: the Cu NVE example, tools/lammps/in.cu_nve.lammps); "
                                   "it must `include ${model_lines}`")
    r.add_argument("--var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="extra -var for the input (example: --var nx 4 --var steps 50)")
    r.add_argument("--threads", type=positive_int, help="torch/OpenMP threads per rank (default: cores / ranks)")
    r.add_argument("--workdir", default="painnfx_out/lammps", help="where the model file and log go")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=main_run)
    bn = sub.add_parser("bench", **kind, help="steps/s of the Cu NVE example, both pair styles on 1, 2, ... MPI ranks, "
                                              "side by side")
    _model_arguments(bn)
    bn.add_argument("--pair-styles", nargs="+", choices=PAIR_STYLES, default=list(PAIR_STYLES),
                    help="pair styles to time")
    bn.add_argument("--ranks", type=positive_int, nargs="+", default=[1, 2], help="MPI rank counts to time")
    bn.add_argument("--sizes", type=positive_int, nargs="+", default=[3, 6, 10],
                    help="cubic cells per side (4 n^3 atoms: 108, 864, 4000)")
    bn.add_argument("--steps", type=positive_int, default=50, help="timed MD steps (after a 5-step warm-up run)")
    bn.add_argument("--out", default="docs/perf/lammps_bench", help="writes OUT.json and OUT.md")
    bn.add_argument("--workdir", default="painnfx_out/lammps_bench", help="where the model file and LAMMPS logs go")
    bn.set_defaults(func=main_bench)


def _pair_style_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair-style", choices=PAIR_STYLES, default="painnfx",
                   help="painnfx: the C++ plugin (per-layer ghost exchange, no Python; CPU); mliap: ML-IAP with the "
                        "model in LAMMPS's Python (CUDA too)")


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="model checkpoint (default: the built-in default Cu model)")
    p.add_argument("--types", nargs="+", default=["Cu"], help="element of each LAMMPS atom type, in order")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64", help="floating-point precision of the model")
    p.add_argument("--device", default="cpu", help="torch device of each rank's model")
    p.add_argument("--optimize", choices=["auto", "fused", "off"], default="auto",
                   help="mliap only (pair_style painnfx always runs the fused C++ ops): auto: optimize() and the "
                        "path rule (set up while the run goes); fused: always the fused graph; off: plain")
    p.add_argument("--skin", type=non_negative_float, default=2.0, help="LAMMPS neighbor skin, Angstrom (sets `neighbor`)")


def main_build(args) -> int:
    return subprocess.run(["bash", str(BUILD_SCRIPT)]).returncode


def main_export(args) -> int:
    check_device(args.device)
    out, lines_file, lines = export(args.out, args.checkpoint, args.types, DTYPES[args.dtype], args.device,
                                    args.optimize, args.skin, args.pair_style)
    print(f"model file: {out}\ninput lines: {lines_file}\n")
    print("\n".join(lines))
    if args.pair_style == "painnfx":
        print(f"\nin your input, after the box is created:\n  include {lines_file}\n"
              f"run (no Python in the MD process; OMP_NUM_THREADS = cores / ranks):\n"
              f"  OMP_NUM_THREADS=1 mpirun -np 2 {find_lmp_or('lmp')} -in in.your_input")
        return 0
    print(f"\nin your input, after the box is created:\n  include {lines_file}\n"
          f"run (LAMMPS's embedded Python must import painnfx, torch and lammps from this environment):\n"
          f"  PYTHONPATH={lammps_env()['PYTHONPATH']} \\\n  mpirun -np 2 {find_lmp_or('lmp')} -in in.your_input")
    return 0


def main_run(args) -> int:
    check_device(args.device)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    _, lines_file, _ = export(model_file(work, args.pair_style), args.checkpoint, args.types, DTYPES[args.dtype],
                              args.device, args.optimize, args.skin, args.pair_style)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.nprocs)
    variables = {"model_lines": lines_file, **dict(args.var)}
    input_file = Path(args.input).resolve() if args.input else EXAMPLE
    proc = run_lammps(str(input_file), variables, args.nprocs, cwd=str(work), threads=threads)
    write_text(work / "lammps.out", proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        print(f"LAMMPS failed (exit {proc.returncode}); full output in {work / 'lammps.out'}", file=sys.stderr)
        return proc.returncode or 1
    perf = loop_performance(proc.stdout) or {}
    summary = {"input": str(input_file), "pair_style": args.pair_style, "ranks": args.nprocs,
               "threads_per_rank": threads, "dtype": args.dtype, "optimize": args.optimize, **perf, "log": str(work / "lammps.out")}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        thermo = _thermo_block(proc.stdout)
        print(thermo)
        print(f"{perf.get('atoms')} atoms, pair_style {args.pair_style}, {args.nprocs} MPI ranks x {threads} threads: "
              f"{perf.get('steps_per_s', float('nan')):.3g} steps/s; log in {work / 'lammps.out'}")
    return 0


PAIR_COUNTS = re.compile(r"painnfx pair rank (\d+)/(\d+): owned (\d+), ghosts (\d+) \(of (\d+) in the shell.*?edges (\d+), "
                         r"exchanges (\d+), ghost shell ([0-9.]+) A, threads (\d+)")
MLIAP_COUNTS = re.compile(r"computed per layer: (\d+) owned \+ (\d+) ghost atoms, (\d+) edges")


def rank_counts(output: str, pair_style: str) -> list:
    """Per rank, what its first evaluation computed per layer: owned atoms, ghost atoms whose
    features were computed (mliap) or received (painnfx), edges; painnfx also the rank and rank
    count, the ghosts LAMMPS holds (``shell``), the exchanges each way, the ghost shell (A) and the
    rank's threads."""
    if pair_style == "painnfx":
        found = sorted(PAIR_COUNTS.findall(output), key=lambda m: int(m[0]))
        return [{"rank": int(k), "ranks": int(p), "owned": int(o), "ghosts": int(g), "shell": int(sh), "edges": int(e),
                 "exchanges": int(x), "shell_A": float(a), "threads": int(t)} for k, p, o, g, sh, e, x, a, t in found]
    return [{"owned": int(o), "ghosts": int(g), "edges": int(e)} for o, g, e in MLIAP_COUNTS.findall(output)]


def busiest(counts: list) -> dict:
    """The rank with the most owned + ghost atoms ({} without counts)."""
    return max(counts, key=lambda c: c["owned"] + c["ghosts"]) if counts else {}


def main_bench(args) -> int:
    """Each (size, pair style, ranks) in its own LAMMPS run; threads per rank = cores / ranks, so
    every row uses the whole machine. The example input's loop time covers the MD steps only (not
    start-up)."""
    import platform

    from .flops import cpuinfo

    check_device(args.device)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    lines = {}
    for style in args.pair_styles:
        lines[style] = export(model_file(work, style), args.checkpoint, args.types, DTYPES[args.dtype],
                              args.device, args.optimize, args.skin, style)[1]
    cores = os.cpu_count() or 1
    rows = []
    for size in args.sizes:
        for style in args.pair_styles:
            for ranks in args.ranks:
                threads = max(1, cores // ranks)
                proc = run_lammps(str(EXAMPLE), {"model_lines": lines[style], "nx": size, "steps": args.steps,
                                                 "thermo": args.steps}, ranks, cwd=str(work), threads=threads)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                    return proc.returncode or 1
                perf = loop_performance(proc.stdout)
                counts = rank_counts(proc.stderr, style)
                rows.append({"cells": size, "atoms": perf["atoms"], "pair_style": style, "ranks": ranks,
                             "threads_per_rank": threads, "steps": perf["steps"], "seconds": perf["seconds"],
                             "steps_per_s": perf["steps_per_s"], "per_rank": counts})
                worst = busiest(counts)
                print(f"{perf['atoms']:6d} atoms  {style:8s} {ranks} ranks x {threads} threads  "
                      f"{perf['steps_per_s']:.3g} steps/s  (busiest rank: {worst.get('owned')} owned + "
                      f"{worst.get('ghosts')} ghost atoms, {worst.get('edges')} edges)", flush=True)
    for row in rows:
        base = next(r for r in rows if r["cells"] == row["cells"] and r["pair_style"] == row["pair_style"]
                    and r["ranks"] == args.ranks[0])
        row["speedup_vs_first"] = row["steps_per_s"] / base["steps_per_s"]
    meta = {"cpu": cpuinfo("model name") or platform.processor() or "unknown CPU", "machine": f"{platform.machine()}, {cores} cores", "torch": torch.__version__,
            "dtype": args.dtype, "optimize_mliap": args.optimize, "device": args.device,
            "model": args.checkpoint or "default Cu", "input": "tools/lammps/in.cu_nve.lammps (NVE, 1 fs)",
            "lammps": find_lmp(), "steps": args.steps}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = ["| atoms | pair style | MPI ranks x threads | steps/s | vs " + f"{args.ranks[0]} rank(s) | "
             "per rank: owned + ghost atoms computed, edges (busiest rank) |", "|---|---|---|---|---|---|"]
    for r in rows:
        c = busiest(r["per_rank"])
        how = "received" if r["pair_style"] == "painnfx" else "computed"
        what = f"{c['owned']} + {c['ghosts']} ({how}), {c['edges']}" if c else "n/a"
        table.append(f"| {r['atoms']} | {r['pair_style']} | {r['ranks']} x {r['threads_per_rank']} | "
                     f"{r['steps_per_s']:.3g} | {r['speedup_vs_first']:.2f}x | {what} |")
    write_text(out.with_suffix(".md"),
        f"LAMMPS MD, painnfx {meta['model']} model ({args.dtype}; mliap with optimize={args.optimize}), "
        f"{meta['cpu']} ({meta['machine']}), torch {meta['torch']}; {args.steps} steps per row after LAMMPS set-up, "
        "one process layout per row. painnfx: ghost atoms whose features were received per layer (their "
        "messages are computed with the pair on one rank only); mliap: ghost atoms whose features were "
        "computed.\n\n" + "\n".join(table) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def _thermo_block(stdout: str) -> str:
    lines = stdout.splitlines()
    start = max((k for k, ln in enumerate(lines) if ln.split()[:2] == ["Step", "Time"]), default=None)
    if start is None:
        return ""
    end = next((k for k in range(start, len(lines)) if lines[k].startswith("Loop time")), len(lines))
    return "\n".join(lines[start:end])
