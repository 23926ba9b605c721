"""``painnfx longrun``: a long NVE run of the optimized and the plain calculator from one state.

What a weeks-long production MD needs and a 200-step benchmark cannot show: that the optimized
calculator conserves energy as well as the plain model (the same drift within noise), that its
memory does not grow (resident set size at the end against an early step), and that it compiles
nothing more as the run goes on (joint graphs, Dynamo graphs, re-bound weights, path choices).
Both calculators run the same number of steps from the same initial state (their trajectories part
after a few hundred steps: MD is chaotic; the drift and the energy spread are what compare).
Writes a JSON summary (``--out``); ``docs/testing.md`` holds the reference numbers.

    painnfx longrun --steps 20000 --size 2 --out docs/perf/longrun.json
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from .usage import non_negative_int, positive_float, positive_int, write_text


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", help="model checkpoint (default: the built-in default model)")
    p.add_argument("--size", type=positive_int, default=2, help="n x n x n cubic Cu cells of the structure (4 n^3 atoms)")
    p.add_argument("--steps", type=positive_int, default=20000, help="NVE steps of each calculator")
    p.add_argument("--timestep", type=positive_float, default=1.0, help="fs")
    p.add_argument("--temperature", type=positive_float, default=300.0, help="K of the initial velocities")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the initial velocities")
    p.add_argument("--out", help="write the JSON summary here (replaced when complete)")
    p.add_argument("--every", type=positive_int, default=1000,
                   help="record energy, memory and compiled graphs every N steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def resident_mb() -> float:
    """This process's resident set size, MB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def compiled_graphs(calc) -> dict:
    """What the calculator's model has compiled or measured so far."""
    import torch

    fast = calc.evaluator if calc.optimized else None
    dynamo = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))
    if fast is None:
        return {"joint_graphs": 0, "dynamo_graphs": dynamo, "weights_rebound": 0, "path_switches": 0}
    return {"joint_graphs": len(fast.joint_graphs.graphs), "dynamo_graphs": dynamo,
            "weights_rebound": fast.runner.rebinds if fast.runner is not None else 0,
            "path_switches": len(fast.report.paths)}


def run(calc, atoms, args, progress: bool, label: str) -> dict:
    """NVE of ``atoms`` with ``calc``: records every ``args.every`` steps."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from tqdm import tqdm

    atoms = atoms.copy()
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=args.timestep * units.fs)
    e0 = atoms.get_total_energy()
    records = [{"step": 0, "energy_eV_per_atom": 0.0, "rss_mb": resident_mb(), **compiled_graphs(calc)}]
    energies = []
    start = time.perf_counter()
    with tqdm(total=args.steps, desc=label, unit="step", disable=not progress) as bar:
        done = 0
        while done < args.steps:
            k = min(args.every, args.steps - done)
            for _ in range(k):
                dyn.run(1)
                energies.append(atoms.get_total_energy())
            done += k
            bar.update(k)
            records.append({"step": done, "energy_eV_per_atom": (energies[-1] - e0) / len(atoms),
                            "rss_mb": resident_mb(), **compiled_graphs(calc)})
    seconds = time.perf_counter() - start
    dev = (np.array(energies) - e0) / len(atoms)
    steps = np.arange(1, len(dev) + 1)
    slope = float(np.polyfit(steps, dev, 1)[0]) * 1000 if len(dev) > 1 else 0.0  # per 1000 steps
    return {"steps_per_s": args.steps / seconds, "drift_eV_per_atom": float(dev[-1]),
            "drift_fit_eV_per_atom_per_1000_steps": slope, "energy_std_eV_per_atom": float(dev.std()),
            "max_energy_deviation_eV_per_atom": float(np.abs(dev).max()), "records": records}


def main_longrun(args) -> int:
    import torch

    from painnfx.model.calculator import PaiNNCalculator

    from .md import default_structure

    atoms = default_structure(args.size, args.temperature, args.seed)
    summary = {"atoms": len(atoms), "steps": args.steps, "timestep_fs": args.timestep, "dtype": "float64",
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name, optimize in (("optimized", "auto"), ("plain", False)):
        start = time.perf_counter()
        calc = PaiNNCalculator(args.checkpoint, optimize=optimize, setup="now")  # the steady state from step 1
        setup = time.perf_counter() - start
        summary[name] = {"setup_s": setup, **run(calc, atoms, args, not args.quiet, name)}
        rec = summary[name]["records"]
        first = next((r for r in rec if r["step"] >= min(1000, args.steps)), rec[-1])
        summary[name]["rss_growth_after_first_record"] = rec[-1]["rss_mb"] / first["rss_mb"] - 1.0
        summary[name]["graphs_added_after_first_record"] = {
            k: rec[-1][k] - first[k] for k in ("joint_graphs", "dynamo_graphs", "weights_rebound", "path_switches")}
        if name == "optimized":
            summary[name]["paths"] = calc.evaluator.report.paths if calc.optimized else []
    text = json.dumps(summary, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_text(args.out, text + "\n")
    for name in ("optimized", "plain"):
        s = summary[name]
        print(f"{name}: {s['steps_per_s']:.1f} steps/s; drift {s['drift_eV_per_atom']:.2e} eV/atom "
              f"(fit {s['drift_fit_eV_per_atom_per_1000_steps']:.2e} per 1000 steps, std {s['energy_std_eV_per_atom']:.2e}); "
              f"RSS {s['records'][-1]['rss_mb']:.0f} MB, {100 * s['rss_growth_after_first_record']:+.1f}% after the first "
              f"record; graphs added after it: {s['graphs_added_after_first_record']}")
    return 0
