"""The painnfx command line: md (the README's main job) and bench, on tiny settings."""

import json
import re

import pytest

from helpers import CPU_KERNELS, fused_target
from painnfx.ops import dispatch
from painnfx.tools.bench import markdown_table, measure, speedups
from painnfx.tools.cli import build_parser, main
from painnfx.tools.systems import alkane, standard_systems


def test_standard_systems_sizes():
    sizes = {k: len(v) for k, v in standard_systems().items()}
    assert sizes == {"H2O": 3, "CH4": 5, "benzene": 12, "C16H34": 50, "Cu500": 500, "Cu2048": 2048, "Cu8000": 8000}
    a = alkane(16)
    from ase.geometry import get_distances

    _, d = get_distances(a.positions)
    d[range(len(a)), range(len(a))] = 10
    assert d.min() > 0.9  # a sane molecule: no overlapping atoms


def test_md_text_output(capsys):
    assert main(["md", "--steps", "3", "--compare-steps", "2", "--size", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "steps/s" in out and "energy drift" in out and "speedup" in out
    assert "neighbor searches: 1 for 4 evaluations (skin 1 A)" in out
    assert "set-up " in out and "first energy and forces after" in out
    assert "path from call 1" in out  # which path answered (the plain model while set-up is under way)


def test_md_reports_the_cpp_ops_of_its_joint_graph(capsys, monkeypatch):
    """With the joint graphs on, `painnfx md` runs a compiled joint graph after the first step and
    reports the C++ library's ops it ran (counted in C++): its matrix products and fused ops."""
    from helpers import native_ops_expected

    if not native_ops_expected():
        pytest.skip("the C++ library's products are off here")
    monkeypatch.setenv("PAINNFX_JOINT", "1")
    main(["md", "--steps", "3", "--compare-steps", "0", "--size", "1", "--json", "--quiet", "--dtype", "float64",
          "--setup", "now"])
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert [p["path"] for p in summary["paths"]] == ["compiled forces graph"] and summary["final_path"] == \
        "compiled forces graph"
    assert summary["setup_s"] > 0 and summary["first_result_s"] > 0 and summary["job_s"] > summary["md_s"]
    assert summary["kernels"]["dense"]["cpp"] >= 3 * 10  # 4 calls after the policy's, ~30 products each
    assert summary["kernels"]["painn_message"]["cpp"] >= 3 * 2


def test_md_json_summary_fused_path(capsys):
    """`painnfx md --optimize on`: the fused graph ran every step on the C++ kernels, and the
    trajectory equals the unoptimized replay."""
    main(["md", "--steps", "4", "--compare-steps", "3", "--size", "1", "--json", "--quiet", "--dtype", "float64",
          "--optimize", "on"])
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["atoms"] == 4 and summary["steps"] == 4
    assert summary["steps_per_s"] > 0
    assert summary["optimized"] and summary["fused_nodes"] == 6  # a fused message and update per layer
    # ASE's VelocityVerlet evaluates forces once per step, plus the initial call: 5 energy+forces
    # evaluations, 3 layers each, every one on the C++ kernels
    assert summary["kernels"]["painn_message"] == {"cpp": 15}
    assert summary["kernels"]["painn_message_backward"] == {"cpp": 15}
    # one neighbor search (cutoff + 1 A) serves the 5 evaluations of 4 steps of 300 K Cu
    assert (summary["neighbor_searches"], summary["neighbor_calls"]) == (1, 5)
    assert summary["max_position_difference_A"] < 1e-12  # fp64: the same trajectory to rounding
    # the speedup comes from the side-by-side replay of both calculators, not from the main run
    assert summary["compare_steps"] == 3
    assert summary["speedup_over_unoptimized"] == pytest.approx(
        summary["side_by_side_steps_per_s"] / summary["unoptimized_steps_per_s"])
    # NVE, 1 fs, fp64: velocity Verlet's energy error over 4 steps of a 4-atom cell (measured 5e-7)
    assert abs(summary["energy_drift_eV_per_atom"]) < 5e-6


def test_md_replays_the_calculators_in_turn():
    """`painnfx md`'s comparison steps the calculators alternately, from one initial state, so
    their speeds are measured in the same stretch of time; equal calculators, equal paths."""
    from types import SimpleNamespace

    from ase.calculators.emt import EMT

    from painnfx.tools.md import default_structure, replay_side_by_side

    order = []

    class Logged(EMT):
        def __init__(self, name):
            super().__init__()
            self.tag = name

        def calculate(self, *a, **k):
            order.append(self.tag)
            super().calculate(*a, **k)

    args = SimpleNamespace(timestep=1.0, thermostat="nve")
    (pos_a, sec_a), (pos_b, sec_b) = replay_side_by_side(default_structure(1), [Logged("a"), Logged("b")], args, 3)
    assert "".join(order) == "aabbabab"  # each: the initial forces and the first step, then a step each in turn
    assert pos_a.shape == (4, 4, 3) and (pos_a == pos_b).all() and sec_a > 0 and sec_b > 0


@pytest.mark.parametrize("variant", ["eager", "optimized"])
def test_bench_measure_one_case(variant):
    rec = measure("H2O", variant, dtype="float32", device="cpu", threads=1, warmup=0,
                  min_repeats=2, max_repeats=2, max_time=0.0)
    assert rec["repeats"] == 2 and rec["median_s"] > 0 and rec["n_atoms"] == 3
    # the FLOP model (tools/flops.py): ~10 MFLOP; the C++ kernels' paired algorithm computes the
    # filter rows of H2O's 3 edge pairs once each (3 x 3 layers x 18FK = 0.41 MFLOP less)
    paired = variant == "optimized" and dispatch.chosen("painn_message", "cpu") == CPU_KERNELS
    assert rec["flop_model"] == ("paired" if paired else "per-edge") and rec["pairs"] == 3
    assert rec["gflop"] == pytest.approx(0.00953 if paired else 0.00994, rel=0.002)
    assert rec["gflops_per_s"] == pytest.approx(rec["gflop"] / rec["median_s"])


def test_bench_times_variants_interleaved_in_rounds(monkeypatch):
    """The default protocol: every variant of a system in one process, warmed up, then rounds
    that call each variant for a burst in turn, each round starting one variant later; a
    variant that cannot run is recorded with its reason and the others are still timed."""
    from painnfx.tools import bench, variants

    log = []

    def fake(name):
        def make(model, prepared):
            def step():
                log.append(name)
                return variants.eager(model, prepared)()

            return step

        return make

    def unavailable(model, prepared):
        raise variants.Unavailable("not here")

    monkeypatch.setitem(variants.VARIANTS, "a", fake("a"))
    monkeypatch.setitem(variants.VARIANTS, "b", fake("b"))
    monkeypatch.setitem(variants.VARIANTS, "c", unavailable)
    monkeypatch.setattr(bench, "BURST_S", 1e9)  # bursts bounded by max_repeats // MIN_ROUNDS
    monkeypatch.setattr(bench, "MIN_ROUNDS", 4)
    recs = bench.measure_interleaved("H2O", ["a", "b", "c"], dtype="float64", device="cpu", threads=1, warmup=1,
                                     min_repeats=8, max_repeats=8, max_time=0.0)
    a, b, c = recs
    assert c == {**c, "variant": "c", "error": "not here"} and "median_s" not in c
    assert a["repeats"] == b["repeats"] == 8 and "interleaved, 4 rounds" in a["protocol"]
    assert a["max_force_error_vs_eager"] < 1e-12  # checked after timing, against eager
    # first call + warm-up of each, then 4 rounds of 2 calls, alternating, each round rotated,
    # then one call each for the force check
    assert "".join(log) == "aa" + "bb" + "aabb" + "bbaa" + "aabb" + "bbaa" + "a" + "b"


def test_bench_runs_variants_alone_when_the_interleaved_process_fails(monkeypatch):
    """A crash of the shared process costs no results: each variant is then run in its own,
    and its record says why."""
    import subprocess
    from types import SimpleNamespace

    from painnfx.tools import bench

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=-11, stdout="",
                                                                          stderr="Segmentation fault"))
    monkeypatch.setattr(bench, "_run_case", lambda args, s, v: {"system": s, "variant": v, "median_s": 1.0})
    args = SimpleNamespace(warmup=0, min_repeats=1, max_repeats=1, max_time=0.0, dtype="float32", device="cpu",
                           threads=1, case_timeout=10.0)
    recs = bench._run_system(args, "H2O", ["eager", "auto"])
    assert [r["variant"] for r in recs] == ["eager", "auto"]
    assert all(r["protocol"].startswith("isolated (the interleaved run failed: Segmentation fault") for r in recs)


def test_bench_records_the_path_the_auto_policy_chose(monkeypatch):
    """``auto`` cases say which path answered, from which call (JSON and the markdown table); the
    forces graphs traced but not compiled, to keep this short."""
    import functools

    from painnfx.rewriter import joint, optimized_model
    from painnfx.tools.bench import markdown_table

    monkeypatch.setattr(optimized_model, "JointGraphs", functools.partial(joint.JointGraphs, compile=False))
    rec = measure("H2O", "auto", dtype="float64", device="cpu", threads=1, warmup=0, min_repeats=1, max_repeats=1,
                  max_time=0.0)
    (choice,) = rec["paths"]
    assert choice["path"] == "compiled forces graph" and choice["call"] == 1
    table = markdown_table({"results": [rec], "speedups_vs_eager": {}})
    assert "| H2O | auto | compiled forces graph | 1 |" in table


def test_flop_model_and_machine_metadata():
    from painnfx.tools.bench import environment, machine_line
    from painnfx.tools.flops import energy_forces_flops

    per_atom = energy_forces_flops(1, 0)["total"]
    per_edge = energy_forces_flops(0, 1)["total"]
    assert per_atom == 3 * 60 * 128 ** 2 + 2 * 128 ** 2 and per_edge == 3 * (18 * 128 * 20 + 70 * 128)
    env = environment("cpu", 2, "float32")
    assert {"avx2", "avx512f", "amx_tile"} <= set(env["isa"]) and env["threads"] == 2
    assert env["flush_denormal"] in (True, False, None) and env["torch"] == __import__("torch").__version__
    peak = env["fma_peak_gflops"]
    if peak["clock_ghz"]:
        assert peak["float32"] == pytest.approx(2 * peak["float64"]) and peak["float32"] > 0
    assert env["processor"] in machine_line(env) and "threads" in machine_line(env)


def test_bench_report_helpers():
    results = [
        {"system": "H2O", "variant": "eager", "n_atoms": 3, "n_edges": 6, "median_s": 2.0},
        {"system": "H2O", "variant": "fused", "n_atoms": 3, "n_edges": 6, "median_s": 1.0},
        {"system": "H2O", "variant": "compile", "error": "boom"},
    ]
    sp = speedups(results)
    assert sp == {"H2O": {"eager": 1.0, "fused": 2.0}}
    table = markdown_table({"results": results, "speedups_vs_eager": sp})
    assert "1000.00 (2.00x)" in table and "n/a" in table


def test_help_lists_subcommands():
    text = build_parser().format_help()
    assert all(name in text for name in ("md", "bench", "eval", "inspect", "lammps", "distill"))


def test_inspect_text_json_and_dot(tmp_path, capsys):
    cfg = '{"n_atom_basis": 8, "n_rbf": 4, "n_interactions": 2, "seed": 1}'
    assert main(["inspect", "--random", cfg]) == 0
    text = capsys.readouterr().out
    for needle in ("[match_radial_basis]", "gaussian_rbf", "rc=5.0", "fused_painn_message", "folded", "kernel launches"):
        assert needle in text
    assert main(["inspect", "--random", cfg, "--json", "--dot", str(tmp_path / "g"), "--format"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["applied"] and report["fused_nodes"] == 4
    assert report["launches_after"]["total"] < report["launches_before"]["total"]
    dot = (tmp_path / "g_before.dot").read_text()
    assert "digraph" in dot and "#fde0dd" in dot  # a highlighted region
    assert "fused_painn_message" in (tmp_path / "g_after.dot").read_text()


def test_inspect_checkpoint_and_pickle_guard(tmp_path, capsys):
    from painnfx.model.checkpoint import save_checkpoint
    from painnfx.model.default import random_model

    path = tmp_path / "m.pt"
    save_checkpoint(random_model(0, n_atom_basis=8, n_rbf=4, n_interactions=1), path)
    assert main(["inspect", "--checkpoint", str(path)]) == 0
    assert "fused_painn_message" in capsys.readouterr().out
    assert main(["inspect", "--schnetpack", str(path)]) == 2
    assert "allow-pickle" in capsys.readouterr().err


def test_inspect_shows_the_joint_graphs(capsys):
    """`painnfx inspect --joint`: node counts of the plain and optimized joint graphs and the
    fused nodes (forward and analytical backward) in the latter."""
    cfg = '{"n_atom_basis": 8, "n_rbf": 4, "n_interactions": 2, "seed": 1}'
    assert main(["inspect", "--random", cfg, "--joint", "--json"]) == 0
    traced = json.loads(capsys.readouterr().out)["joint"]["traced"]
    assert traced["optimized_nodes"] < traced["plain_nodes"]
    assert traced["fused"] == {fused_target("prepare_edges"): 1, fused_target("painn_message"): 2,
                               fused_target("painn_message_backward"): 2}
    assert main(["inspect", "--random", cfg, "--joint"]) == 0
    assert "joint graph (energy+forces, traced): plain model" in capsys.readouterr().out


def test_inspect_measures_the_auto_path(capsys):
    from painnfx.tools.cli import main

    assert main(["inspect", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "path: the path rule" in out and "from call 1" in out and "3 atoms" in out


def test_lammps_export_writes_model_and_lines(tmp_path, capsys):
    """`painnfx lammps export` (no LAMMPS needed): the model file loads back, the lines name it,
    and a type the model lacks is refused at export."""
    from painnfx.model.lammps_mliap import load
    from painnfx.model.validation import InputError

    out = tmp_path / "cu.pkl"
    assert main(["lammps", "export", "--pair-style", "mliap", "--out", str(out), "--optimize", "off"]) == 0
    text = capsys.readouterr().out
    lines = (tmp_path / "cu.pkl.lammps").read_text()
    assert f"pair_style mliap unified {out} ${{painnfx_ghost_lists}}" in lines and "pair_coeff * * Cu" in lines
    assert "comm_modify cutoff ${painnfx_comm_cutoff}" in lines and "include" in text
    model = load(out)
    assert model.comm_cutoff == 3 * 5.0 + 2.0 and model.rcutfac == 2.5
    assert main(["lammps", "export", "--pair-style", "mliap", "--out", str(tmp_path / "ni.pkl"), "--types", "Ni",
                 "--optimize", "off"]) == 2
    assert "unknown element(s) ['Ni']" in capsys.readouterr().err
    assert issubclass(InputError, ValueError)


def test_export_writes_the_pair_style_model_file(tmp_path, capsys):
    """`painnfx export` (no LAMMPS needed): the file, its metadata printed; `painnfx lammps export`
    for the pair style refuses a type the model lacks before it builds the plugin."""
    from painnfx.model.lammps_pair import read_model_file

    assert main(["export", "default", str(tmp_path / "cu.pfx"), "--dtype", "float32"]) == 0
    assert '"n_layers": 3' in capsys.readouterr().out
    assert read_model_file(tmp_path / "cu.pfx")["dtype"] == "float32"
    assert main(["lammps", "export", "--out", str(tmp_path / "ni.pfx"), "--types", "Cu", "Ni"]) == 2
    assert "element Ni (atom type 2) is not in the model; it knows: Cu" in capsys.readouterr().err
    assert main(["lammps", "export", "--out", str(tmp_path / "gpu.pfx"), "--device", "cuda:0"]) != 0


BAD_INPUT = [
    (["md", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["md", "--steps", "many"], "argument --steps: 'many' is not an integer"),
    (["md", "--compare-steps", "-1"], "argument --compare-steps: must be at least 0"),
    (["md", "--timestep", "0", "--steps", "1"], "argument --timestep: must be more than 0"),
    (["md", "--temperature", "-5"], "argument --temperature: must be at least 0"),
    (["md", "--temperature", "nan"], "argument --temperature: must be a finite number"),
    (["md", "--friction", "-1"], "argument --friction: must be at least 0"),
    (["md", "--timestep", "inf"], "argument --timestep: must be a finite number"),
    (["md", "--checkpoint", "@tmp"], "is a folder, not a checkpoint file"),
    (["eval", "@structure", "@structure"], "(the same file): writing it would destroy the input"),
    (["md", "--structure", "@missing", "--steps", "1"], "no such file"),
    (["md", "--structure", "@tmp", "--steps", "1"], "not a readable file"),
    (["md", "--structure", "@garbage", "--steps", "1"], "ASE cannot read it"),
    (["md", "--checkpoint", "@missing", "--steps", "1"], "does not exist"),
    (["md", "--checkpoint", "@garbage", "--steps", "1"], "is corrupt"),
    (["md", "--device", "cuda", "--steps", "1"], "--device cuda: no CUDA device is available here"),
    (["md", "--device", "tpu", "--steps", "1"], "--device tpu"),
    (["md", "--cuda-graphs", "--device", "cpu", "--steps", "1"], "--cuda-graphs needs --device cuda"),
    (["md", "--steps", "1", "--plot", "@unwritable/e.png"], "--plot @unwritable/e.png: cannot create its folder"),
    (["md", "--steps", "1", "--trajectory", "@tmp"], "is a folder, not a file"),
    (["inspect", "--random", "{bad"], "--random: malformed JSON"),
    (["inspect", "--random", "[1, 2]"], "--random: expected a JSON object"),
    (["inspect", "--random", '{"n_atom_basis": 8, "colour": 1}'], "--random: not a PaiNN config"),
    (["inspect", "--checkpoint", "@missing"], "does not exist"),
    (["bench", "--systems", "Cu7"], "unknown system/variant: ['Cu7']"),
    (["bench", "--variants", "fastest"], "unknown system/variant: ['fastest']"),
    (["bench", "--device", "cuda", "--systems", "H2O"], "no CUDA device is available here"),
    (["bench", "--systems", "H2O", "--variants", "eager", "--out", "@unwritable/b"], "@unwritable"),
    (["lammps", "export", "--device", "cuda"], "no CUDA device is available here"),
    (["lammps", "export", "--checkpoint", "@missing"], "does not exist"),
    (["lammps", "run", "-np", "0"], "argument -np/--nprocs: must be at least 1"),
    (["distill", "--elements", "Xx", "--n-train", "1", "--out", "@tmp/x.pt"], "Xx"),
    (["eval", "@missing", "@tmp/out.xyz"], "IN @missing: no such file"),
    (["eval", "@tmp", "@tmp/out.xyz"], "not a readable file"),
    (["eval", "@empty", "@tmp/out.xyz"], "the file is empty"),
    (["eval", "@garbage", "@tmp/out.xyz"], "ASE cannot read it"),
    (["eval", "@structure", "@unwritable/out.xyz"], "OUT @unwritable/out.xyz: cannot create its folder"),
    (["eval", "@structure", "@tmp"], "is a folder, not a file"),
    (["eval", "@structure", "@tmp/out.xyz", "--max-atoms", "0"], "argument --max-atoms: must be at least 1"),
    (["eval", "@structure", "@tmp/out.xyz", "--device", "cuda"], "no CUDA device is available here"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a[:3]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_line_and_exit_status_2(argv, message, tmp_path, capsys):
    garbage = tmp_path / "garbage.xyz"
    garbage.write_bytes(b"\x00\x01 not a structure or a checkpoint")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is expected")
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    structure = tmp_path / "cu.xyz"
    structure.write_text("1\n\nCu 0 0 0\n")
    names = dict(missing=str(tmp_path / "missing.xyz"), tmp=str(tmp_path), garbage=str(garbage),
                 unwritable=str(blocker), empty=str(empty), structure=str(structure))
    def fill(text):
        for key, value in names.items():
            text = text.replace(f"@{key}", value)
        return text

    argv = [fill(a) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors: usage line + message, status 2
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert fill(message) in err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.match(rf"painnfx {argv[0]}( \w+)?: error: ", last), err


def test_files_written_by_default_stay_out_of_the_repository():
    """Every output default of every subcommand lies under painnfx_out/ (in .gitignore), except
    bench results, whose home is docs/perf/; nothing is written to the working folder itself."""
    import argparse
    from pathlib import Path

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = []

    def walk(p, name):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child_name, child in action.choices.items():
                    walk(child, f"{name} {child_name}")
            elif action.dest in ("out", "workdir", "output", "plot", "trajectory") and action.default is not None:
                seen.append((name, action.dest, action.default))

    for name, p in sub.choices.items():
        walk(p, name)
    assert seen, "no output options found"
    for name, dest, default in seen:
        assert default.startswith(("painnfx_out/", "docs/perf/")), (name, dest, default)
    ignore = (Path(__file__).parents[1] / ".gitignore").read_text().split()
    assert "/painnfx_out/" in ignore


def test_bench_results_name_their_dtype_and_commit():
    """The default output is one file set per kind and dtype, and every result's environment names the
    painnfx commit it ran (git's own answer, "+changes" when the tree differs from it)."""
    import subprocess
    from pathlib import Path

    from painnfx.tools import bench
    from painnfx.tools.bench import DEFAULT_OUT, environment, output_stem

    assert output_stem(DEFAULT_OUT, False, "cpu", "float64") == "docs/perf/cpu_bench_float64"
    assert output_stem(DEFAULT_OUT, True, "cpu", "float32") == "docs/perf/throughput_float32"
    assert output_stem(DEFAULT_OUT, False, "cuda:0", "float32") == "docs/perf/gpu_bench_float32"
    assert output_stem("elsewhere/x", False, "cpu", "float32") == "elsewhere/x"
    source = Path(bench.__file__).resolve()  # in a checkout (editable install) or an installed copy
    tracked = subprocess.run(["git", "-C", str(source.parent), "ls-files", "--error-unmatch", source.name],
                             capture_output=True, text=True)
    head = subprocess.run(["git", "-C", str(source.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    commit = environment("cpu", 1, "float32")["commit"]
    if tracked.returncode:
        assert commit is None  # an installed copy (site-packages may even lie in another repository)
    else:
        assert commit.split("+")[0] == head.stdout.strip()


def test_throughput_bench_case_and_table():
    """`painnfx bench --throughput`: one set timed as a whole, one call per structure or batched."""
    from painnfx.tools.bench import throughput_table

    recs = [measure("mol64", v, dtype="float64", device="cpu", threads=1, warmup=0, min_repeats=1, max_repeats=1,
                    max_time=0.0, max_atoms=200, max_edges=10**6) for v in ("eager-1by1", "eager-batched")]
    one, batched = recs
    assert one["structures"] == batched["structures"] == 64 and one["batches"] == 64
    assert 3 <= batched["batches"] < 64  # 464 atoms in batches of at most 200
    assert batched["structures_per_s"] == pytest.approx(64 / batched["median_s"])
    report = {"results": recs, "speedups_vs_eager": speedups(recs, "eager-1by1"), "environment": {}}
    table = throughput_table(report)
    assert "| mol64 | 64 | 464 |" in table and "| eager-1by1 | 64 |" in table and "1.00x" in table


def test_compile_forces_variant_gives_the_eager_energy_and_forces():
    """The bench's strongest peer: torch.compile of torch.func.grad_and_value of the energy. One
    interaction: with two or more, torch 2.13's Inductor returns forces off by ~1e-4 eV/A for this
    F=8 model (eager and aot_eager backends exact; the default F=128 model is exact, docs/perf),
    which is why the bench records ``max_force_error_vs_eager`` per case."""
    import torch
    from ase.build import molecule

    from helpers import system_tensors
    from painnfx.model.default import random_model
    from painnfx.model.properties import compute_properties
    from painnfx.tools.variants import VARIANTS, Prepared

    model = random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=6).double()
    pos, numbers, nl, cell = system_tensors(molecule("CH4"), model.cutoff)
    step = VARIANTS["compile-forces"](model, Prepared(pos, numbers, nl.edge_index, nl.shifts, nl.cell_shifts, cell,
                                                      False))
    energy, forces = step()
    ref = compute_properties(model, pos, numbers, nl.edge_index, nl.shifts)
    torch.testing.assert_close(energy.reshape(1), ref.energy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forces, ref.forces, rtol=1e-10, atol=1e-10)


def test_longrun_short_version(tmp_path, capsys):
    """CI's short version of the long NVE run (docs/testing.md has the 20,000-step numbers): both
    calculators conserve energy alike, and nothing is compiled, measured or re-bound after the first
    record, while memory stays flat."""
    import json

    out = tmp_path / "longrun.json"
    assert main(["longrun", "--steps", "300", "--every", "100", "--size", "1", "--quiet", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    fast, plain = summary["optimized"], summary["plain"]
    for s in (fast, plain):
        assert s["graphs_added_after_first_record"] == {"joint_graphs": 0, "dynamo_graphs": 0, "weights_rebound": 0,
                                                        "path_switches": 0}
        assert abs(s["rss_growth_after_first_record"]) < 0.05
        assert abs(s["drift_eV_per_atom"]) < 1e-3
    assert abs(fast["drift_eV_per_atom"] - plain["drift_eV_per_atom"]) < 1e-8  # 4 atoms: one trajectory for 300 steps
    assert "optimized:" in capsys.readouterr().out


def test_precision_measures_the_bf16_filter_gate(tmp_path):
    """``painnfx precision``: float32 and bf16 filter products against float64, with the gate; bf16's
    error is that of 8-bit mantissas, far above float32's, and the JSON is written whole."""
    out = tmp_path / "precision.json"
    assert main(["precision", "--systems", "H2O", "--held-out", "1", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["gate"] == {"max_meV_A": 1.0, "mean_meV_A": 0.2}
    for res in report["sets"].values():
        assert res["float32"]["max_meV_A"] < 0.1 and res["float32"]["passes_gate"]
        assert res["bf16-filters"]["max_meV_A"] > 10 * res["float32"]["max_meV_A"]
