"""``painnfx bench``: energy+forces timings of several variants on the standard set.

By default each system's variants run together in one fresh Python process, timed in
alternating rounds (``measure_interleaved``): on a shared machine the CPU's speed drifts by
tens of percent over seconds, and only variants timed in the same stretch of time can be
compared. ``--isolated`` runs every (system, variant) pair in a process of its own instead,
one after another (the protocol of the bench files before 2026-12-01); the throughput and
``--largest`` modes always do. Peak memory (CPU) comes from a further process per pair run with
``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``, so that every tensor of 64 KiB or
more is mmapped and returned on free and the resident set tracks live tensor memory: after
warm-up the kernel's high-water mark (VmHWM) is reset and the rise over the resident set
during one call is reported; that process's first call is also the cold first call
(``first_call_cold_s``). On GPU it is ``torch.cuda.max_memory_allocated`` over the timed calls
(isolated) or over one more call of each variant after the rounds (interleaved).
Within a process: one untimed call per variant (compilation happens here and is reported as
``first_call_s``), ``warmup`` more untimed calls, then timed calls until ``min_repeats`` are
done and ``max_time`` seconds (per variant) have passed, or ``max_repeats``. The median is
reported; ratios are taken within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .dtypes import DTYPES
from .usage import (UsageError, check_device, non_negative_float, non_negative_int, output_file, positive_float,
                    positive_int, save_figure, write_text)

#: ``--out``'s default: replaced by docs/perf/<kind>_<dtype> (main_bench)
DEFAULT_OUT = "docs/perf/cpu_bench_DTYPE"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (VmHWM); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _model(dtype: str, device: str, threads: int, seed: int):
    from painnfx.model.default import random_model

    torch.set_num_threads(threads)
    model = random_model(seed).to(device=torch.device(device), dtype=DTYPES[dtype])
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _prepare(system: str, model):
    """The system's atoms, neighbor list and tensors, and the record fields every variant shares."""
    from painnfx.model.neighbors import neighbor_list

    from .flops import energy_forces_flops
    from .systems import system as lookup
    from .variants import Prepared

    p = next(model.parameters())
    dt, dev, cfg = p.dtype, p.device, model.config
    atoms = lookup(system)
    nl = neighbor_list(atoms.positions, model.cutoff, atoms.cell.array, atoms.pbc, dtype=dt, device=dev)
    prepared = Prepared(
        torch.as_tensor(atoms.positions, dtype=dt, device=dev),
        torch.as_tensor(atoms.numbers, device=dev),
        nl.edge_index, nl.shifts, nl.cell_shifts,
        torch.as_tensor(atoms.cell.array, dtype=dt, device=dev), atoms.pbc,
    )
    flops = lambda pairs: energy_forces_flops(len(atoms), nl.n_edges, cfg.n_atom_basis, cfg.n_rbf,
                                              cfg.n_interactions, pairs)["total"] / 1e9
    record = {"system": system, "n_atoms": len(atoms), "n_edges": nl.n_edges, "gflop": flops(0)}
    if dev.type == "cpu":  # the C++ message kernels compute each pair's filter rows once
        pairs = _pairs(prepared)
        record.update(gflop_paired=flops(pairs), pairs=pairs)
    return prepared, record


def _pairs(p) -> int:
    """Edge pairs (i <- j, r), (j <- i, -r) of the prepared system, as ``prepare_edges`` finds them."""
    from painnfx.ops.edges import reverse_edges

    i, j = p.edge_index
    r = p.positions[j] - p.positions[i] + p.shifts
    return int((reverse_edges(r, i, j) >= 0).sum()) // 2


#: variants whose message ops run painnfx's kernels (the paired algorithm on CPU)
FUSED_VARIANTS = ("optimized", "auto")


def _cpp_messages() -> bool:
    """Whether the message ops of this process run the C++ kernels (not the reference)."""
    from painnfx.ops import dispatch
    from painnfx.ops.cpu import backend

    return dispatch.chosen("painn_message", "cpu") == backend.NAME


def _finish(record: dict, step, model, prepared) -> dict:
    """What a timed case adds after timing: the paths an optimized model took, GFLOP/s, and (up to
    ``CHECK_MAX_ATOMS``) the forces of one more call against eager autograd's."""
    paths = getattr(getattr(getattr(step, "evaluator", None), "report", None), "paths", None)
    if paths:  # which path answered from which call on (the path rule, optimized_model.py)
        record["paths"] = [{k: c[k] for k in ("path", "call", "why")} for c in paths]
    paired = record.pop("gflop_paired", None)
    if paired is not None and record.get("variant") in FUSED_VARIANTS and _cpp_messages():
        record["gflop"], record["flop_model"] = paired, "paired"
    else:
        record["flop_model"] = "per-edge"
    if "median_s" in record:
        record["gflops_per_s"] = record["gflop"] / record["median_s"]
        if record["n_atoms"] <= CHECK_MAX_ATOMS:  # a fast variant must also be right: its forces against eager's
            from painnfx.model.properties import compute_properties

            p = prepared
            ref = compute_properties(model, p.positions, p.numbers, p.edge_index, p.shifts)
            out = step()
            forces = out.forces if hasattr(out, "forces") else out[1]
            record["max_force_error_vs_eager"] = float((forces.detach() - ref.forces).abs().max())
    return record


def measure(system: str, variant: str, *, dtype: str, device: str, threads: int, warmup: int,
            min_repeats: int, max_repeats: int, max_time: float, seed: int = 0,
            max_atoms: int = None, max_edges: int = None) -> dict:
    """Run one (system, variant) pair in this process and return its record. A structure set of
    the throughput benchmark (``tools/systems.structure_sets``) is timed as a whole, with
    ``max_atoms``/``max_edges`` bounding its batches."""
    from .systems import structure_sets
    from .variants import THROUGHPUT_VARIANTS, VARIANTS, Unavailable

    model = _model(dtype, device, threads, seed)
    dev = torch.device(device)
    if system in structure_sets():
        from painnfx.model.batch import DEFAULT_MAX_ATOMS

        structures = structure_sets()[system]()
        max_atoms = max_atoms or DEFAULT_MAX_ATOMS
        step = THROUGHPUT_VARIANTS[variant](model, structures, max_atoms, max_edges)
        record = {"system": system, "variant": variant, "structures": len(structures),
                  "n_atoms": sum(len(a) for a in structures), "n_edges": step.n_edges, "batches": step.batches,
                  "max_atoms": max_atoms, "max_edges": step.max_edges}
        record = _time(step, dev, record, warmup, min_repeats, max_repeats, max_time)
        if "median_s" in record:
            record["structures_per_s"] = len(structures) / record["median_s"]
        return record
    prepared, shared = _prepare(system, model)
    record = {**shared, "variant": variant}
    try:
        start = time.perf_counter()
        step = VARIANTS[variant](model, prepared)
        record["setup_s"] = time.perf_counter() - start  # optimize(), torch.compile's wrapper, ...
    except Unavailable as exc:
        return {**record, "error": str(exc)}
    record = _time(step, dev, record, warmup, min_repeats, max_repeats, max_time)
    return _finish(record, step, model, prepared)


#: rounds of the interleaved protocol at least, when ``max_repeats`` bounds the calls
MIN_ROUNDS = 20
#: seconds of calls of one variant in one round at most (so that rounds alternate quickly)
BURST_S = 0.05


def measure_interleaved(system: str, variants: list[str], *, dtype: str, device: str, threads: int,
                        warmup: int, min_repeats: int, max_repeats: int, max_time: float, seed: int = 0,
                        clock=time.perf_counter) -> list[dict]:
    """Every variant of one system in this process, timed in alternating rounds.

    On a shared machine the speed of the CPU drifts by tens of percent over seconds, so
    variants timed one after another (or in separate processes) are compared at different
    speeds. Here each variant is built, called once (``first_call_s``) and warmed up, then
    rounds call each variant in turn for a short burst (at most ``BURST_S`` seconds and
    ``max_repeats // MIN_ROUNDS`` calls; each round starts one variant later), until every
    variant has ``min_repeats`` calls and ``max_time`` seconds per variant have passed, or
    ``max_repeats`` calls. The median of each variant's calls is reported: every variant saw
    the same stretch of machine time. ``first_call_s`` here shares the process's imports and
    caches with the variants built before it (the memory pass times a cold first call).
    """
    from .variants import VARIANTS, Unavailable

    model = _model(dtype, device, threads, seed)
    dev = torch.device(device)
    prepared, shared = _prepare(system, model)
    records, steps, bursts = {}, {}, {}
    for variant in variants:
        record = records[variant] = {**shared, "variant": variant}
        try:
            start = clock()
            step = VARIANTS[variant](model, prepared)
            record["setup_s"] = clock() - start  # optimize(), torch.compile's wrapper, ...
            record["first_call_s"], per_call = _warm_up(step, dev, warmup, clock)
        except Unavailable as exc:
            record["error"] = str(exc)
            continue
        except (torch.OutOfMemoryError, MemoryError) as exc:
            record["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            continue
        steps[variant] = step
        bursts[variant] = max(1, min(int(BURST_S / max(per_call, 1e-9)), max_repeats // MIN_ROUNDS))
    times = {v: [] for v in steps}
    order, start, rounds = list(steps), clock(), 0
    budget = max_time * len(order)

    def more(v):
        return len(times[v]) < max_repeats and (len(times[v]) < min_repeats or clock() - start < budget)

    while order and any(more(v) for v in order):
        for v in order[rounds % len(order):] + order[: rounds % len(order)]:
            for _ in range(bursts[v] if more(v) else 0):
                times[v].append(_timed_call(steps[v], dev, clock))
        rounds += 1
    if dev.type == "cuda":  # the peak memory of one more call of each (on CPU: the memory pass)
        for variant, step in steps.items():
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            step()
            torch.cuda.synchronize(dev)
            records[variant]["peak_cuda_mb"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    out = []
    for variant, record in records.items():
        if variant in steps:
            ts = times[variant]
            record.update(timer="cuda events" if dev.type == "cuda" else "perf_counter",
                          median_s=statistics.median(ts), min_s=min(ts), repeats=len(ts),
                          protocol=f"interleaved, {rounds} rounds of up to {bursts[variant]} calls")
            record = _finish(record, steps[variant], model, prepared)
        out.append(record)
    return out


def _warm_up(step, dev: torch.device, warmup: int, clock) -> tuple:
    """The first call (where compilation happens) and ``warmup`` more, untimed as calls: (seconds
    of the first call, seconds per warm-up call, or the first call's without warm-up calls)."""
    t0 = clock()
    step()
    _sync(dev)
    first = clock() - t0
    t0 = clock()
    for _ in range(warmup):
        step()
    _sync(dev)
    return first, (clock() - t0) / warmup if warmup else first


def _timed_call(step, dev: torch.device, clock) -> float:
    """Seconds of one call: device time between two events on CUDA, the clock on CPU."""
    if dev.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3
    t = clock()
    step()
    return clock() - t


#: systems up to this size get the force check against eager (eager's cost grows fast beyond it)
CHECK_MAX_ATOMS = 600


def _time(step, dev: torch.device, record: dict, warmup: int, min_repeats: int, max_repeats: int,
          max_time: float) -> dict:
    """The timing protocol of every case: one untimed first call (``first_call_s``), ``warmup``
    more, then timed calls (median, min, repeats) and the peak memory of those calls."""
    try:
        record["first_call_s"], _ = _warm_up(step, dev, warmup, time.perf_counter)
        # peak memory of the steady-state calls only: reset the high-water marks after warm-up
        base_rss = _rss_bytes()
        hwm_reset = _reset_peak_rss()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base_cuda = torch.cuda.memory_allocated(dev)
        times = []
        start = time.perf_counter()
        while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < max_time):
            times.append(_timed_call(step, dev, time.perf_counter))
    except (torch.OutOfMemoryError, MemoryError) as exc:
        return {**record, "error": f"out of memory: {str(exc).splitlines()[0]}"}
    record.update(
        timer="cuda events" if dev.type == "cuda" else "perf_counter",
        median_s=statistics.median(times),
        min_s=min(times),
        repeats=len(times),
        rss_rise_mb=(_peak_rss_bytes() - base_rss) / 2**20,
        rss_method="VmHWM reset after warm-up" if hwm_reset else "ru_maxrss (includes setup)",
    )
    if dev.type == "cuda":
        record["peak_cuda_mb"] = (torch.cuda.max_memory_allocated(dev) - base_cuda) / 2**20
    return record


def output_stem(out: str, throughput: bool, device: str, dtype: str) -> str:
    """``--out``, or for the default one file set per kind and dtype (a run of the other dtype keeps
    this one's): docs/perf/cpu_bench_<dtype>, gpu_bench_<dtype> or throughput_<dtype>."""
    if out != DEFAULT_OUT:
        return out
    kind = "throughput" if throughput else ("gpu_bench" if device.startswith("cuda") else "cpu_bench")
    return f"docs/perf/{kind}_{dtype}"


#: the folders of the painnfx sources, next to tools/ (docs, such as the bench's own outputs, do not count)
SOURCE_FOLDERS = ("../ops", "../rewriter", "../model", "../tools", "../pyproject.toml")


def source_commit():
    """The git commit of the painnfx sources that run (with "+changes" when they differ from it),
    or None when they are not files of a git checkout (an installed copy, even inside some other
    repository): what every result names beside its CPU and date."""
    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "-C", str(here), "ls-files", "--error-unmatch", "--", Path(__file__).name],
                                 capture_output=True, text=True, timeout=10)
        if tracked.returncode:
            return None
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--",
                                *SOURCE_FOLDERS], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def environment(device: str, threads: int, dtype: str) -> dict:
    """What a result depends on: CPU model and ISA, threads, torch, the flush state, the peak."""
    from painnfx.ops.cpu import backend

    from .flops import cpuinfo, fma_peak_gflops, isa

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": cpuinfo("model name") or platform.processor() or "unknown",
        "isa": isa(),
        "threads": threads,
        "dtype": dtype,
        "device": device,
        "flush_denormal": backend.flush_denormal_state(),  # the caller's: the C++ kernels flush on their own
        "cpu_kernels": backend.info().get("flags") or backend.info().get("error"),
        "native_ops": _native_state(),
        "fma_peak_gflops": fma_peak_gflops(threads),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": source_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _native_state() -> str:
    """Whether the joint graphs run the C++ library's products and Inductor's C++ wrapper (rewriter/cpp_ops.py)."""
    from painnfx.ops.cpu import backend
    from painnfx.rewriter.cpp_ops import enabled, wanted

    if enabled():
        return "on"
    return "off (PAINNFX_NATIVE=0)" if not wanted() else f"unavailable: {backend.info().get('error', '')[:200]}"


def _run_case(args, system: str, variant: str, largest: bool = False, memory: bool = False) -> dict:
    """One (system, variant) measurement in a fresh process, bounded by ``--case-timeout``.
    ``largest``: one untimed and one timed call; ``memory``: the peak-memory pass (one warm-up,
    one call, every tensor of 64 KiB or more mmapped, so the resident set tracks live memory)."""
    if largest or memory:
        reps = ["--warmup", "1" if memory else "0", "--min-repeats", "1", "--max-repeats", "1", "--max-time", "0"]
    else:
        reps = _timing_args(args)
    bounds = [f"--{k}={getattr(args, k.replace('-', '_'))}" for k in ("max-atoms", "max-edges")
              if getattr(args, k.replace("-", "_"), None)]
    env = {**os.environ, **MEMORY_ENV} if memory else None
    out, failure = _worker(args, ["--worker", system, variant, *reps, *bounds], args.case_timeout,
                           f"over --case-timeout {args.case_timeout} s", env)
    return out if failure is None else {"system": system, "variant": variant, "error": failure}


def _timing_args(args) -> list:
    return ["--warmup", str(args.warmup), "--min-repeats", str(args.min_repeats),
            "--max-repeats", str(args.max_repeats), "--max-time", str(args.max_time)]


def _worker(args, worker_args: list, timeout: float, timeout_error: str, env: dict = None):
    """Run this module as a worker process with ``worker_args`` and the run's dtype, device and
    threads: (what it printed last, as JSON; None), or (None; why it failed)."""
    cmd = [sys.executable, "-m", "painnfx.tools.bench", *worker_args, "--dtype", args.dtype, "--device", args.device,
           "--threads", str(args.threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None, timeout_error
    if proc.returncode != 0:
        return None, " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def _run_system(args, system: str, variants: list[str]) -> list[dict]:
    """All variants of one system in one fresh process, timed interleaved (``measure_interleaved``).
    If that process fails (a crash, over ``--case-timeout`` per variant), each variant is run on
    its own instead, and its record says so."""
    out, failure = _worker(args, ["--worker-system", system, "--variants", *variants, *_timing_args(args)],
                           args.case_timeout * len(variants), f"over --case-timeout {args.case_timeout} s per variant")
    if failure is None:
        return out
    records = [_run_case(args, system, v) for v in variants]
    for r in records:
        r["protocol"] = f"isolated (the interleaved run failed: {failure[:200]})"
    return records


def run(args) -> dict:
    from tqdm import tqdm

    from .systems import gpu_systems, standard_systems, structure_sets
    from .variants import DEFAULT_VARIANTS, THROUGHPUT_VARIANTS, VARIANTS

    if args.throughput:
        systems = args.systems or list(structure_sets())
        variants = args.variants or list(THROUGHPUT_VARIANTS)
        known_systems, known_variants = structure_sets(), THROUGHPUT_VARIANTS
    else:
        systems = args.systems or list(standard_systems())
        variants = args.variants or DEFAULT_VARIANTS
        known_systems, known_variants = gpu_systems(), VARIANTS
    unknown = [s for s in systems if s not in known_systems] + [v for v in variants if v not in known_variants]
    if unknown:
        raise UsageError(f"unknown system/variant: {unknown}; systems: {list(known_systems)}, "
                         f"variants: {list(known_variants)}")
    results = []
    interleaved = not (args.isolated or args.throughput)
    groups = [(s, variants) for s in systems] if interleaved else [(s, [v]) for s in systems for v in variants]
    for system, group in tqdm(groups, desc="bench", unit="system" if interleaved else "case", disable=args.quiet):
        records = _run_system(args, system, group) if interleaved else [_run_case(args, system, group[0])]
        for record in records:
            results.append(record)
            variant = record["variant"]
            if args.device == "cpu" and not args.no_memory and "median_s" in record:
                rec = _run_case(args, system, variant, memory=True)
                if "rss_rise_mb" in rec:
                    record["peak_mb"] = rec["rss_rise_mb"]
                    record["peak_method"] = "RSS rise over one warm call, mmap threshold 64 KiB, VmHWM reset"
                if interleaved and "first_call_s" in rec:
                    record["first_call_cold_s"] = rec["first_call_s"]
            if not args.quiet:
                msg = f"{record['median_s'] * 1e3:9.2f} ms" if "median_s" in record else f"error: {record['error'][:80]}"
                if "structures_per_s" in record:
                    msg += f"  {record['structures_per_s']:8.1f} structures/s"
                tqdm.write(f"{system:>9} {variant:>17} {msg}")
    base = "eager-1by1" if args.throughput else "eager"
    env = {**environment(args.device, args.threads, args.dtype),
           "protocol": "interleaved: each system's variants in one process, timed in alternating rounds"
           if interleaved else "isolated: each (system, variant) in its own process"}
    return {"environment": env, "results": results, "speedups_vs_eager": speedups(results, base)}


def speedups(results: list[dict], base: str = "eager") -> dict:
    """Per system, each variant's ratio to ``base`` (eager autograd; eager one by one for throughput)."""
    eager = {r["system"]: r["median_s"] for r in results if r["variant"] == base and "median_s" in r}
    out: dict = {}
    for r in results:
        if "median_s" in r and r["system"] in eager:
            out.setdefault(r["system"], {})[r["variant"]] = eager[r["system"]] / r["median_s"]
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if "median_s" in r]
    variants = sorted({r["variant"] for r in results}, key=lambda v: (v != "eager", v))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for v in variants:
        rs = sorted((r for r in results if r["variant"] == v), key=lambda r: r["n_atoms"])
        ax.loglog([r["n_atoms"] for r in rs], [r["median_s"] * 1e3 for r in rs], "o-", label=v)
        rs = [r for r in rs if v in report["speedups_vs_eager"].get(r["system"], {})]  # no eager: no ratio
        ax2.semilogx([r["n_atoms"] for r in rs], [report["speedups_vs_eager"][r["system"]][v] for r in rs], "o-",
                     label=v)
    env = report["environment"]
    where = env.get("gpu") or f"{env['processor']}, {env['threads']} threads"
    ax.set(xlabel="atoms", ylabel="energy+forces, median ms", title=f"{where} ({env['dtype']})")
    ax2.set(xlabel="atoms", ylabel="speedup over eager autograd", title="ratio, same run")
    ax2.axhline(1.0, color="gray", lw=0.8)
    for a in (ax, ax2):
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def machine_line(env: dict) -> str:
    """The machine a table comes from, in one line (every perf table names its CPU)."""
    where = env.get("gpu") or env.get("processor", "unknown CPU")
    isa = ", ".join(k for k, v in (env.get("isa") or {}).items() if v and k in ("avx2", "avx512f", "amx_tile"))
    peak = (env.get("fma_peak_gflops") or {}).get(env.get("dtype"))
    return (f"{where} ({isa or 'no AVX2'}), {env.get('threads')} threads, torch {env.get('torch')}, {env.get('dtype')}, "
            f"caller flush-denormal {env.get('flush_denormal')}"
            + (f", native ops {env['native_ops']}" if env.get("native_ops") else "")
            + (f", FMA peak {peak:.0f} GFLOP/s (estimate, tools/flops.py)" if peak else ""))


def throughput_table(report: dict) -> str:
    """Structures per second of each set and variant (x eager one by one), batches, peak memory."""
    results = report["results"]
    lines = ["| set | structures | atoms | edges | variant | batches | ms per set | structures/s | x eager 1by1 "
             "| peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "median_s" not in r:
            lines.append(f"| {r['system']} | | | | {r['variant']} | | n/a: {r.get('error', '')[:60]} | | | |")
            continue
        sp = report["speedups_vs_eager"].get(r["system"], {}).get(r["variant"])
        peak = f"{r['peak_mb']:.0f} MB" if r.get("peak_mb") is not None else "n/a"
        ratio = f"{sp:.2f}x" if sp else "n/a"
        lines.append(f"| {r['system']} | {r['structures']} | {r['n_atoms']} | {r['n_edges']} | {r['variant']} | "
                     f"{r['batches']} | {r['median_s'] * 1e3:.1f} | {r['structures_per_s']:.0f} | {ratio} | {peak} |")
    env = report.get("environment") or {}
    if env:
        lines = [f"Machine: {machine_line(env)}.", ""] + lines
    return "\n".join(lines)


def plot_throughput(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if "structures_per_s" in r]
    sets = list(dict.fromkeys(r["system"] for r in results))
    variants = list(dict.fromkeys(r["variant"] for r in results))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(variants), 1)
    by = {(r["system"], r["variant"]): r["structures_per_s"] for r in results}
    for k, v in enumerate(variants):
        ax.bar([i + k * width for i in range(len(sets))], [by.get((s, v), 0) for s in sets], width, label=v)
    env = report["environment"]
    where = env.get("gpu") or f"{env['processor']}, {env['threads']} threads"
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(sets))], sets)
    ax.set(ylabel="structures/s (energy+forces)", yscale="log", title=f"{where} ({env['dtype']})")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def markdown_table(report: dict) -> str:
    if any("structures_per_s" in r for r in report["results"]):
        return throughput_table(report)
    results = [r for r in report["results"]]
    variants = sorted({r["variant"] for r in results}, key=lambda v: (v != "eager", v))
    systems = list(dict.fromkeys(r["system"] for r in results))
    by = {(r["system"], r["variant"]): r for r in results}
    lines = ["| system | atoms | edges | " + " | ".join(f"{v}: ms (x eager), peak" for v in variants) + " |",
             "|---|---|---|" + "---|" * len(variants)]
    for s in systems:
        any_r = next(r for r in results if r["system"] == s)
        cells = []
        for v in variants:
            r = by.get((s, v), {})
            if "median_s" in r:
                sp = report["speedups_vs_eager"].get(s, {}).get(v)
                cell = f"{r['median_s'] * 1e3:.2f} ({sp:.2f}x)" if sp else f"{r['median_s'] * 1e3:.2f}"
                if r.get("peak_mb") is not None:
                    cell += f", {r['peak_mb']:.0f} MB"
                cells.append(cell)
            else:
                cells.append("n/a")
        lines.append(f"| {s} | {any_r.get('n_atoms', '')} | {any_r.get('n_edges', '')} | " + " | ".join(cells) + " |")
    env = report.get("environment") or {}
    peak = (env.get("fma_peak_gflops") or {}).get(env.get("dtype"))
    fused = [r for r in results if r["variant"] in ("optimized", "auto") and "gflops_per_s" in r]
    if fused:
        lines += ["", "| system | variant | FLOP model | GFLOP per call (model) | GFLOP/s | of FMA peak |",
                  "|---|---|---|---|---|---|"]
        for r in fused:
            share = f"{100 * r['gflops_per_s'] / peak:.0f}%" if peak else "n/a"
            lines.append(f"| {r['system']} | {r['variant']} | {r.get('flop_model', 'per-edge')} | {r['gflop']:.3g} | "
                         f"{r['gflops_per_s']:.1f} | {share} |")
    started = [r for r in results if "setup_s" in r and "first_call_s" in r]
    if started:  # what a user waits for before the step rate above applies
        lines += ["", "| system | variant | set-up s | first call s |", "|---|---|---|---|"]
        lines += [f"| {r['system']} | {r['variant']} | {r['setup_s']:.2f} | {r['first_call_s']:.2f} |" for r in started]
    chosen = [r for r in results if r.get("paths")]
    if chosen:
        lines += ["", "| system | variant | path | from call |", "|---|---|---|---|"]
        lines += [f"| {r['system']} | {r['variant']} | {c['path']} | {c['call']} |" for r in chosen
                  for c in r["paths"]]
    checked = [r for r in results if "max_force_error_vs_eager" in r and r["variant"] != "eager"]
    if checked:
        lines += ["", "| system | variant | max abs force error vs eager (eV/A) |", "|---|---|---|"]
        lines += [f"| {r['system']} | {r['variant']} | {r['max_force_error_vs_eager']:.1e} |" for r in checked]
    if env:
        timing = [f"Timing: {env['protocol']}; medians.", ""] if env.get("protocol") else []
        lines = [f"Machine: {machine_line(env)}.", "", *timing] + lines
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--systems", nargs="*", help="subset of the standard set (default: all)")
    p.add_argument("--variants", nargs="*", help="eager, compile, compile-ro, schnetpack, optimized ...")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="floating-point precision of every variant")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="torch and OpenMP threads of the timed processes")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls per case after the first")
    p.add_argument("--min-repeats", type=positive_int, default=5, help="timed calls per case at least")
    p.add_argument("--max-repeats", type=positive_int, default=1000, help="timed calls per case at most")
    p.add_argument("--max-time", type=non_negative_float, default=3.0, help="seconds of timed calls per case (after min-repeats)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="output stem: writes STEM.json, STEM.png, STEM.md (default: docs/perf/cpu_bench_DTYPE, "
                        "gpu_bench_DTYPE on a GPU, throughput_DTYPE with --throughput)")
    p.add_argument("--no-memory", action="store_true", help="skip the separate peak-memory pass")
    p.add_argument("--isolated", action="store_true",
                   help="time each (system, variant) in its own process, one after another, instead of each "
                        "system's variants interleaved in one process (the default)")
    p.add_argument("--case-timeout", type=positive_float, default=1800.0,
                   help="seconds after which a case's worker process is stopped and the case recorded as failed")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--largest", action="store_true",
                   help="instead of timing the set: find the largest Cu cell each variant evaluates (writes STEM.json)")
    p.add_argument("--largest-atoms", type=positive_int, default=10_000_000, help="with --largest: stop above this many atoms")
    p.add_argument("--throughput", action="store_true",
                   help="instead of the standard set: structures/s of sets of many structures (mol64, mol512, "
                        "Cu108x16), one call per structure vs batched, eager vs optimized")
    p.add_argument("--max-atoms", type=positive_int, help="with --throughput: atoms per batch at most")
    p.add_argument("--max-edges", type=positive_int, help="with --throughput: edges per batch at most")


def largest(args) -> dict:
    """The largest n x n x n Cu cell (4 n^3 atoms) each variant evaluates (energy + forces) without
    running out of memory or over ``--case-timeout``: sizes grow by about 1.26x in atoms per step."""
    out = {}
    for variant in args.variants or ["eager", "optimized"]:
        best, n = None, 6
        while 4 * n**3 <= args.largest_atoms:
            rec = _run_case(args, f"CuN{n}", variant, largest=True)
            if "median_s" not in rec:
                break
            best = {"n": n, "atoms": rec["n_atoms"], "edges": rec["n_edges"], "median_s": rec["median_s"]}
            if not args.quiet:
                print(f"largest: {variant} ok at {rec['n_atoms']} atoms ({rec['median_s']:.3g} s)", flush=True)
            n = max(n + 1, round(n * 1.08))
        else:
            rec = {"error": f"stopped at the --largest-atoms limit {args.largest_atoms}"}
        out[variant] = {**(best or {}), "failed_at_n": n, "reason": rec.get("error", "")}
    return out


def main_bench(args) -> int:
    check_device(args.device)
    args.out = output_stem(args.out, args.throughput, args.device, args.dtype)
    output_file(str(Path(args.out).with_suffix(".json")), "--out")  # before minutes of measuring
    if args.largest:
        result = {"environment": environment(args.device, args.threads, args.dtype), "largest": largest(args)}
        stem = Path(args.out)
        stem.parent.mkdir(parents=True, exist_ok=True)
        write_text(stem.with_suffix(".json"), json.dumps(result, indent=2))
        print(json.dumps(result["largest"], indent=2))
        return 0
    report = run(args)
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_text(stem.with_suffix(".json"), json.dumps(report, indent=2))
    write_text(stem.with_suffix(".md"), markdown_table(report) + "\n")
    (plot_throughput if args.throughput else plot)(report, stem.with_suffix(".png"))
    print(markdown_table(report))
    print(f"wrote {stem}.json, {stem}.md, {stem}.png")
    return 0


def _worker_main(argv: list[str]) -> None:
    from .allocator import tune_malloc

    tune_malloc()  # every timed variant gets the same allocator settings (not the memory pass)
    p = argparse.ArgumentParser()
    p.add_argument("--worker", nargs=2)
    p.add_argument("--worker-system")
    add_arguments(p)
    a = p.parse_args(argv)
    timing = dict(dtype=a.dtype, device=a.device, threads=a.threads, warmup=a.warmup, min_repeats=a.min_repeats,
                  max_repeats=a.max_repeats, max_time=a.max_time)
    if a.worker_system:
        print(json.dumps(measure_interleaved(a.worker_system, a.variants, **timing)))
        return
    rec = measure(a.worker[0], a.worker[1], **timing, max_atoms=a.max_atoms, max_edges=a.max_edges)
    print(json.dumps(rec))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
