"""``painnfx md``: molecular dynamics with the default (or a given) model through the ASE calculator.

Runs the trajectory with the optimized calculator, then replays the first steps with the
optimized and the unoptimized model side by side (one step of each in turn) from the same
initial state, to measure the speedup in the same stretch of time and to check that both
give the same trajectory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from typing import Optional

import numpy as np
import torch

from painnfx.ops.cpu import backend as cpu_backend
from painnfx.ops.dispatch import backends_that_ran, record_calls

from .dtypes import DTYPES
from .usage import (UsageError, check_device, non_negative_float, non_negative_int, output_file, positive_float,
                    positive_int, read_structure, replaced_when_complete, save_figure)


def default_structure(size: int = 3, temperature: float = 300.0, seed: int = 0):
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (size, size, size)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def _integrator(atoms, args):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    dt = args.timestep * units.fs
    if args.thermostat == "nve":
        return VelocityVerlet(atoms, timestep=dt)
    return Langevin(atoms, timestep=dt, temperature_K=args.temperature, friction=args.friction / units.fs,
                    rng=np.random.default_rng(args.seed))


def run_md(atoms, calc, args, steps: int, progress: bool, trajectory=None):
    """Run ``steps`` steps; returns (total energies, positions, seconds of steps 2..n).

    The first step is excluded from the time (``_steady_seconds``); ``run_md.first_result_s`` is
    the time to the first energy and forces (the initial state's), ``run_md.step_times`` every
    step's seconds.
    The trajectory file replaces an existing one only when the run is complete.
    """
    with contextlib.ExitStack() as stack:
        atoms = atoms.copy()
        atoms.calc = calc
        dyn = _integrator(atoms, args)
        if trajectory is not None:
            from ase.io.trajectory import Trajectory

            traj = stack.enter_context(Trajectory(stack.enter_context(replaced_when_complete(trajectory, "wb")), "w",
                                                  atoms))
            dyn.attach(traj.write, interval=args.traj_interval)
        return _steps(atoms, dyn, steps, progress)


def _steps(atoms, dyn, steps: int, progress: bool):
    from tqdm import tqdm

    start = time.perf_counter()
    energies, positions = [atoms.get_total_energy()], [atoms.positions.copy()]
    run_md.first_result_s = time.perf_counter() - start
    potential = [atoms.get_potential_energy()]
    step_times = run_md.step_times = []
    with tqdm(total=steps, desc="md", unit="step", disable=not progress) as bar:
        for _ in range(steps):
            t0 = time.perf_counter()
            dyn.run(1)
            energies.append(atoms.get_total_energy())
            potential.append(atoms.get_potential_energy())
            step_times.append(time.perf_counter() - t0)
            positions.append(atoms.positions.copy())
            bar.update(1)
    run_md.last_potential = np.array(potential)
    return np.array(energies), np.array(positions), _steady_seconds(step_times)


def _steady_seconds(step_times: list) -> float:
    """Seconds of steps 2..n (of the only step when there is one): the first carries one-off
    costs (first neighbor list, lazy initialisation) that would distort short runs' steps/s."""
    return sum(step_times[1:]) if len(step_times) > 1 else sum(step_times)


def replay_side_by_side(atoms, calcs: list, args, steps: int):
    """Each calculator runs the first ``steps`` steps from the same initial state, one step of
    each in turn, so that every one is timed in the same stretch of machine time (on a shared
    machine the CPU's speed drifts by tens of percent over seconds). Returns, per calculator,
    its positions after each step and the seconds of steps 2..n (the first carries one-off costs)."""
    runs = []
    for calc in calcs:
        copy = atoms.copy()
        copy.calc = calc
        runs.append((copy, _integrator(copy, args), [copy.positions.copy()], []))
    for _ in range(steps):
        for copy, dyn, positions, times in runs:
            t0 = time.perf_counter()
            dyn.run(1)
            times.append(time.perf_counter() - t0)
            positions.append(copy.positions.copy())
    return [(np.array(positions), _steady_seconds(times)) for _, _, positions, times in runs]


def plot_energy(total, potential, n_atoms, args, summary, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(total)) * args.timestep / 1000.0
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    a1.plot(t, (total - total[0]) / n_atoms * 1000, label="total")
    a1.set(ylabel="E_tot - E_tot(0), meV/atom", title=f"{n_atoms} atoms, {args.thermostat}, dt = {args.timestep} fs")
    a2.plot(t, potential / n_atoms, color="C1", label="potential")
    a2.set(xlabel="time, ps", ylabel="E_pot, eV/atom")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--structure", help="structure file readable by ase.io.read (default: Cu fcc supercell)")
    p.add_argument("--size", type=positive_int, default=3, help="n x n x n cubic Cu cells (4 n^3 atoms) when no --structure is given")
    p.add_argument("--checkpoint", help="model checkpoint (default: the built-in default model)")
    p.add_argument("--steps", type=positive_int, default=200, help="MD steps with the optimized calculator")
    p.add_argument("--compare-steps", type=non_negative_int, default=20,
                   help="steps replayed by the optimized and the unoptimized model side by side, for the "
                        "speedup and the trajectory check (0: skip)")
    p.add_argument("--temperature", type=non_negative_float, default=300.0,
                   help="K: the initial velocities, and the Langevin thermostat's target")
    p.add_argument("--timestep", type=positive_float, default=1.0, help="integration time step, fs")
    p.add_argument("--thermostat", choices=["nve", "langevin"], default="nve",
                   help="nve: velocity Verlet; langevin: Langevin dynamics at --temperature")
    p.add_argument("--friction", type=non_negative_float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to run the model on (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64",
                   help="floating-point precision of the model (float64 conserves energy best)")
    p.add_argument("--optimize", choices=["auto", "on", "off"], default="auto",
                   help="auto: the calculator's default (the path rule: plain model until set up, then the fused graph "
                        "and the compiled forces graph); on: always the fused "
                        "graph; off: the plain model")
    p.add_argument("--setup", choices=["background", "now"], default="background",
                   help="with --optimize auto: background answers at once with the plain model and switches to "
                        "the fused graph and the compiled forces graph when each is built and pays for itself; now "
                        "sets up before the first step (the steady state from the start)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture a whole step in a CUDA graph and replay it (CUDA devices only)")
    p.add_argument("--trajectory", help="write an ASE .traj file (an existing one is replaced when the run ends)")
    p.add_argument("--traj-interval", type=positive_int, default=10, help="write every N-th step to --trajectory")
    p.add_argument("--seed", type=int, default=0, help="random seed of the initial velocities and of Langevin's noise")
    p.add_argument("--plot", help="write a PNG of total/potential energy per atom vs time")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")


def _with_products(kernels: dict, dense_calls: int) -> dict:
    """{op: {backend: calls}} with the C++ library's matrix products (``painnfx::dense``, counted in C++)."""
    out = {op: dict(v) for op, v in kernels.items()}
    if dense_calls:
        out["dense"] = {"cpp": dense_calls}
    return out


def _final_rate(step_times: list, paths: list) -> Optional[float]:
    """Steps per second after the last path switch (the path the rest of a longer run keeps), its
    first step (which carried the switch) left out; None when fewer than 2 steps ran on it."""
    if not paths:
        return None
    switched = max(0, paths[-1]["call"] - 2)  # the initial state's call is call 1: step k (from 0) is call k + 2
    rest = step_times[switched + 1:]
    return len(rest) / sum(rest) if len(rest) > 1 and sum(rest) > 0 else None


def main_md(args) -> int:
    job_start = time.perf_counter()
    from painnfx.model.calculator import PaiNNCalculator
    from painnfx.model.default import is_trained_default

    check_device(args.device)
    if args.cuda_graphs and not args.device.startswith("cuda"):
        raise UsageError("--cuda-graphs needs --device cuda")
    atoms = (read_structure(args.structure) if args.structure
             else default_structure(args.size, args.temperature, args.seed))
    if len(atoms) == 0:
        raise UsageError(f"--structure {args.structure}: the structure has no atoms")
    for option, path in (("--trajectory", args.trajectory), ("--plot", args.plot)):
        if path:
            output_file(path, option)  # before the run, not after it
    if args.structure and not atoms.get_velocities().any():
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    model = args.checkpoint  # None -> default model
    dtype = DTYPES[args.dtype]
    optimize = {"auto": "auto", "on": True, "off": False}[args.optimize]
    setup_start = time.perf_counter()
    calc = PaiNNCalculator(model, device=args.device, dtype=dtype, optimize=optimize, setup=args.setup,
                           cuda_graphs=args.cuda_graphs)
    setup_s = time.perf_counter() - setup_start
    if hasattr(calc.evaluator, "plan"):  # the run's length is known: set-up is paid as soon as the run repays it
        calc.evaluator.plan(args.steps + 1 + min(args.compare_steps, args.steps))
    if not args.quiet and not args.checkpoint and not is_trained_default():
        print("note: no trained default checkpoint is installed; using the deterministic random model (seed 0)")
    dense_before = cpu_backend.call_counts().get("dense", 0)
    with record_calls() as calls:
        energies, positions, seconds = run_md(atoms, calc, args, args.steps, not args.quiet, args.trajectory)
    dense_calls = cpu_backend.call_counts().get("dense", 0) - dense_before
    n = len(atoms)
    report = getattr(calc.evaluator, "report", None)
    paths = list(report.paths) if report is not None else []
    drift = energies - energies[0]
    summary = {
        "atoms": n,
        "steps": args.steps,
        "optimized": calc.optimized,
        "device": str(calc.device),
        "dtype": args.dtype,
        # the job: set-up (calculator and model), time to the first energy and forces, then steps
        "setup_s": setup_s,
        "first_result_s": run_md.first_result_s,
        "md_s": run_md.first_result_s + sum(run_md.step_times),
        "steps_per_s": max(args.steps - 1, 1) / seconds,
        # the path answering at the end of the run, and its rate (a longer run keeps it)
        "final_path": paths[-1]["path"] if paths else ("plain model" if not calc.optimized else None),
        "final_path_steps_per_s": _final_rate(run_md.step_times, paths),
        "paths": [{k: c[k] for k in ("path", "call", "seconds", "why")} for c in paths],
        # neighbor searches (cutoff + skin) against energy evaluations: the rest reused the candidates
        "neighbor_searches": calc.neighbors.searches,
        "neighbor_calls": calc.neighbors.calls,
        "energy_drift_eV_per_atom": float(drift[-1] / n),
        "max_energy_deviation_eV_per_atom": float(np.abs(drift).max() / n),
        "fused_nodes": report.fused_nodes if calc.optimized else 0,
        # which implementation ran each fused op, and how often (the C++ kernels counted in C++)
        "kernels": _with_products(backends_that_ran(calls), dense_calls),
        # the first step's one-off cost of the compiled joint graph (trace + Inductor), not in steps_per_s
        "joint_compile_s": {k: g["compile_seconds"] for k, g in report.joint.get("graphs", {}).items()}
        if calc.optimized else {},
    }
    if args.plot:
        plot_energy(energies, run_md.last_potential, n, args, summary, args.plot)
    k = min(args.compare_steps, args.steps)
    if k > 0:  # the speedup from both calculators stepped in turn, not from two runs at different times
        plain = PaiNNCalculator(calc.model, device=args.device, dtype=dtype, optimize=False)
        (_, sec_fast), (pos_plain, sec_plain) = replay_side_by_side(atoms, [calc, plain], args, k)
        summary["compare_steps"] = k
        summary["side_by_side_steps_per_s"] = max(k - 1, 1) / sec_fast
        summary["unoptimized_steps_per_s"] = max(k - 1, 1) / sec_plain
        summary["speedup_over_unoptimized"] = sec_plain / sec_fast
        summary["max_position_difference_A"] = float(np.abs(pos_plain - positions[: k + 1]).max())
    summary["job_s"] = time.perf_counter() - job_start  # the whole command: set-up, run, comparison
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{n} atoms, {args.steps} steps ({args.thermostat}, {args.timestep} fs) on {summary['device']}, "
              f"optimized={summary['optimized']}")
        print(f"  set-up {summary['setup_s']:.2f} s, first energy and forces after {summary['first_result_s']:.2f} s, "
              f"{args.steps} steps in {sum(run_md.step_times):.2f} s, whole command {summary['job_s']:.1f} s")
        for c in summary["paths"]:
            print(f"  path from call {c['call']} ({c['seconds']} s into the run): {c['path']}"
                  + (f" ({c['why']})" if c["why"] else ""))
        for key, sec in summary["joint_compile_s"].items():
            print(f"  joint graph ({key}) traced and compiled in {sec} s (first step, not in the step rate)")
        if summary["kernels"]:
            print("  ops ran on: " + ", ".join(f"{op} {'/'.join(f'{b} x{k}' for b, k in v.items())}"
                                                       for op, v in summary["kernels"].items()))
        print(f"  neighbor searches: {summary['neighbor_searches']} for {summary['neighbor_calls']} evaluations "
              f"(skin {calc.neighbors.skin:g} A)")
        final = summary["final_path_steps_per_s"]
        print(f"  {summary['steps_per_s']:.2f} steps/s over steps 2..{args.steps}"
              + (f"; {final:.2f} steps/s on the final path ({summary['final_path']})" if final else ""))
        print(f"  energy drift {summary['energy_drift_eV_per_atom']:.2e} eV/atom "
              f"(max deviation {summary['max_energy_deviation_eV_per_atom']:.2e} eV/atom)")
        if k > 0:
            print(f"  side by side over {k} steps: optimized {summary['side_by_side_steps_per_s']:.2f} steps/s, "
                  f"unoptimized {summary['unoptimized_steps_per_s']:.2f} steps/s -> speedup "
                  f"{summary['speedup_over_unoptimized']:.2f}x; trajectories agree to "
                  f"{summary['max_position_difference_A']:.1e} A")
    return 0
