"""What users do to public objects, and unusual input: each case gives a clear painnfx error or the
plain model's result, never a silent wrong number, a lost file or a path lost for good."""

from __future__ import annotations

import copy
import io
import os
import pickle

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read, write
from helpers import CPU_KERNELS, assert_fused, assert_kernels, evaluate
from strategies import SMALL_CONFIG

from painnfx.model.batch import Failed, evaluate as batch_evaluate, iter_evaluate
from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from painnfx.model.default import random_model
from painnfx.model.validation import InputError
from painnfx.ops.dispatch import record_calls
from painnfx.ops.errors import ModelChangedError, NonFiniteError, NotPicklableError
from painnfx.rewriter import optimize
from painnfx.rewriter.joint import JointGraphs
from painnfx.tools.cli import main

CU = dict(SMALL_CONFIG, elements=[29])


def _model(dtype=torch.float64, seed=0):
    return random_model(seed=seed, **CU).to(dtype)


def _cu(n=2):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (n, n, n)
    atoms.rattle(0.05, seed=1)
    return atoms


def _energy_forces(model, atoms):
    out = evaluate(model, atoms)
    return float(out.energy.sum()), out.forces


# -- the eval command never destroys a file ---------------------------------------------------------

def _frames(path, n=3):
    frames = []
    for k in range(n):
        a = _cu(1)
        a.rattle(0.05, seed=k)
        frames.append(a)
    write(path, frames, format="extxyz")
    return path


def _checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(_model(), path)
    return str(path)


def test_eval_refuses_out_that_is_in_or_a_link_to_it(tmp_path, capsys):
    src = _frames(tmp_path / "in.extxyz")
    before = src.read_bytes()
    link = tmp_path / "link.extxyz"
    link.symlink_to(src)
    for out in (src, link):
        code = main(["eval", str(src), str(out), "--model", _checkpoint(tmp_path), "--optimize", "off", "--quiet"])
        assert code == 2
        assert "the same file" in capsys.readouterr().err
        assert src.read_bytes() == before


def test_eval_replaces_out_only_when_complete(tmp_path, monkeypatch, capsys):
    src = _frames(tmp_path / "in.extxyz")
    out = tmp_path / "out.extxyz"
    out.write_text("the user's earlier results\n")
    import painnfx.model.batch as batch

    real = batch.BatchEvaluator.run
    calls = []

    def interrupted(self, systems):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(self, systems)

    monkeypatch.setattr(batch.BatchEvaluator, "run", interrupted)
    argv = ["eval", str(src), str(out), "--model", _checkpoint(tmp_path), "--optimize", "off", "--quiet",
            "--max-atoms", "4"]
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert out.read_text() == "the user's earlier results\n"  # untouched, no half-written file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz", "model.pt", "out.extxyz"]  # no temp left
    monkeypatch.setattr(batch.BatchEvaluator, "run", real)
    assert main(argv) == 0
    assert len(read(out, ":")) == 3
    assert "replaced only once the new one is complete" in _help("eval")


def _help(command: str) -> str:
    from painnfx.tools.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command].format_help()


# -- the optimized model follows the weights the wrapped model holds -----------------------------------

def _replace_all(model, scale=1.1):
    """New Parameter objects for every weight (what load_state_dict(assign=True) does)."""
    sd = {k: (v * scale if "interactions" in k or "filter" in k else v.clone()) for k, v in model.state_dict().items()}
    model.load_state_dict(sd, assign=True)


WAYS = {
    "in place": lambda m: [p.data.mul_(1.1) for p in m.parameters()],
    "load_state_dict": lambda m: m.load_state_dict({k: v * 1.1 if "interactions" in k else v
                                                    for k, v in m.state_dict().items()}),
    "load_state_dict(assign=True)": _replace_all,
    "attribute assignment": lambda m: setattr(m.interactions[0].interatomic_context_net[0], "weight", torch.nn.Parameter(
        m.interactions[0].interatomic_context_net[0].weight.detach() * 1.3)),
    ".data assignment": lambda m: setattr(m.interactions[1].interatomic_context_net[0].weight, "data",
                                          m.interactions[1].interatomic_context_net[0].weight.detach() * 1.3),
    "requires_grad_": lambda m: [p.requires_grad_(False) for p in m.parameters()],
    "dtype round trip": lambda m: m.float().double(),
    "buffer read live": lambda m: m.atomref.__setitem__(29, 0.7),
}


@pytest.mark.parametrize("joint", [False, True], ids=["fused", "joint graph"])
@pytest.mark.parametrize("way", list(WAYS))
def test_the_optimized_model_follows_replaced_weights(way, joint):
    model = _model()
    fast = optimize(model)
    assert_fused(fast.report, CU["n_interactions"])
    atoms = _cu()
    if joint:
        fast.path, fast.joint, fast.joint_graphs = "auto", True, JointGraphs(compile=False)
    evaluate(fast, atoms)  # the joint graph is traced on this call
    assert (len(fast.joint_graphs.graphs) == 1) == joint
    WAYS[way](model)
    with record_calls() as calls:
        e_fast, f_fast = _energy_forces(fast, atoms)
    e_plain, f_plain = _energy_forces(model, atoms)
    assert e_fast == pytest.approx(e_plain, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(f_fast, f_plain, rtol=1e-10, atol=1e-10)
    if not joint:
        assert_kernels(calls, CPU_KERNELS, CU["n_interactions"])


@pytest.mark.parametrize("change, what", [
    (lambda m: m.float(), "is torch.float32 on cpu now"),
    (lambda m: m.interactions[0].to(torch.float32), "is torch.float32 on cpu now"),
    (lambda m: m.radial_basis.offsets.mul_(1.01), "radial_basis.offsets"),
    (lambda m: setattr(m.interactions[0].interatomic_context_net[0], "weight", torch.nn.Parameter(torch.zeros(3, 3).double())),
     "has shape (3, 3) now"),
], ids=["model.float()", "a submodule .to(float32)", "basis constants in place", "a weight of another shape"])
def test_changes_the_graph_cannot_follow_are_a_clear_error(change, what):
    model = _model()
    fast = optimize(model)
    atoms = _cu()
    evaluate(fast, atoms)
    change(model)
    with pytest.raises(ModelChangedError, match="optimize\\(\\) again") as err:
        evaluate(fast, atoms, dtype=model.embedding.weight.dtype)  # positions as the model's first weight
    assert what in str(err.value)


# -- dtypes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_unsupported_dtypes_are_refused_at_construction(dtype):
    with pytest.raises(InputError, match="torch.float32 or torch.float64"):
        PaiNNCalculator(_model(), dtype=dtype)
    with pytest.raises(InputError, match="torch.float32 or torch.float64"):
        batch_evaluate([_cu(1)], _model(), dtype=dtype)
    if dtype.is_floating_point:
        with pytest.raises(InputError, match="torch.float32 or torch.float64"):
            optimize(_model().to(dtype))
    from painnfx.model.torchsim import PaiNNModel

    with pytest.raises(InputError, match="torch.float32 or torch.float64"):
        PaiNNModel(_model(), dtype=dtype)


def test_mixed_dtype_models_are_refused_by_optimize():
    model = _model()
    model.interactions[0].to(torch.float32)
    with pytest.raises(InputError, match="mixed dtypes"):
        optimize(model)


# -- empty systems and threads never cost the fast path --------------------------------------------------

def test_systems_without_atoms_or_edges_never_reach_the_compile():
    calc = PaiNNCalculator(_model(), optimize=True)
    fast = calc.evaluator
    fast.path, fast.joint, fast.joint_graphs = "auto", True, JointGraphs(compile=False)
    for atoms in (Atoms(), Atoms("Cu", positions=[[0, 0, 0]]), Atoms("Cu2", positions=[[0, 0, 0], [9, 0, 0]])):
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        assert np.isfinite(energy) and forces.shape == (len(atoms), 3)
        if len(atoms) == 0:
            assert energy == 0.0
    assert not fast.joint_graphs.graphs and not fast.report.joint.get("rejected")
    atoms = _cu()
    atoms.calc = calc
    atoms.get_forces()
    assert list(fast.joint_graphs.graphs) == ["energy+forces"]


# -- nonsense geometry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("edge", [0.2, 0.02, 1e-4])
def test_a_cell_far_smaller_than_the_cutoff_is_refused_before_any_allocation(edge):
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * edge, pbc=True)
    atoms.calc = PaiNNCalculator(_model(), optimize=False)
    with pytest.raises(InputError, match="max_neighbors"):
        atoms.get_potential_energy()


def test_neighbor_bound_and_minimum_distance_can_be_raised():
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 0.9, pbc=True)  # 122 images within 3 A
    atoms.calc = PaiNNCalculator(_model(), optimize=False, max_neighbors=100)
    with pytest.raises(InputError, match="more than max_neighbors = 100"):
        atoms.get_potential_energy()
    atoms.calc = PaiNNCalculator(_model(), optimize=False)
    assert np.isfinite(atoms.get_potential_energy())
    pair = Atoms("Cu2", positions=[[0, 0, 0], [0.3, 0, 0]])
    pair.calc = PaiNNCalculator(_model(), optimize=False)
    with pytest.raises(InputError, match="closer than min_distance"):
        pair.get_potential_energy()
    pair.calc = PaiNNCalculator(_model(), optimize=False, min_distance=0.1)
    assert np.isfinite(pair.get_potential_energy())


# -- saving and copying an optimized model -------------------------------------------------------------------

def test_saving_an_optimized_model_fails_at_once_naming_what_to_save():
    fast = optimize(_model())
    for save in (lambda: torch.save(fast, io.BytesIO()), lambda: pickle.dumps(fast)):
        with pytest.raises(NotPicklableError, match="save_checkpoint\\(fast.model, path\\)"):
            save()


def test_a_deep_copy_is_optimized_again_and_independent():
    model = _model()
    fast = optimize(model)
    twin = copy.deepcopy(fast)
    assert_fused(twin.report, CU["n_interactions"])
    atoms = _cu()
    assert _energy_forces(twin, atoms)[0] == pytest.approx(_energy_forces(fast, atoms)[0], rel=1e-12)
    with torch.no_grad():
        next(twin.model.parameters()).mul_(2)
    assert _energy_forces(fast, atoms)[0] == pytest.approx(_energy_forces(model, atoms)[0], rel=1e-12)
    assert _energy_forces(twin, atoms)[0] == pytest.approx(_energy_forces(twin.model, atoms)[0], rel=1e-12)


# -- non-finite weights and results ----------------------------------------------------------------------------

def _nan_model():
    model = _model()
    with torch.no_grad():
        model.interactions[0].interatomic_context_net[0].weight[0, 0] = float("nan")
    return model


def test_checkpoints_with_non_finite_weights_are_refused(tmp_path):
    path = tmp_path / "nan.pt"
    save_checkpoint(_nan_model(), path)
    with pytest.raises(CheckpointError, match="NaN or inf weights in interactions.0.interatomic_context_net.0.weight"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_by_optimize():
    with pytest.raises(InputError, match="NaN or inf in interactions.0.interatomic_context_net.0.weight"):
        optimize(_nan_model())


def test_non_finite_results_are_a_named_error_everywhere():
    atoms = _cu(1)
    atoms.calc = PaiNNCalculator(_nan_model(), optimize=False)
    with pytest.raises(NonFiniteError, match="non-finite energy and forces"):
        atoms.get_potential_energy()
    model = _model()
    atoms.calc = calc = PaiNNCalculator(model, optimize=True)
    atoms.get_potential_energy()
    with torch.no_grad():  # weights turned NaN after optimize(), e.g. by a diverged training step
        model.interactions[0].interatomic_context_net[0].weight[0, 0] = float("nan")
    atoms.positions += 0.01  # a new structure, not the calculator's stored result
    with pytest.raises(NonFiniteError, match="non-finite energy"):
        atoms.get_potential_energy()
    with pytest.raises(NonFiniteError, match="structure\\(s\\) 0, 1"):
        batch_evaluate([_cu(1), _cu(1)], _nan_model(), optimize=False)
    results = list(iter_evaluate([_cu(1), _cu(1)], model, optimize=False))
    assert all(isinstance(r, Failed) and "NaN" in r.reason for r in results)


# -- messages ----------------------------------------------------------------------------------------------------

def test_checkpoint_errors_never_advise_loading_untrusted_code(tmp_path):
    class Code:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "code.pt"
    torch.save({"format": "painnfx-painn", "payload": Code()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value) and "GLOBAL" in str(err.value)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_every_flag_of_every_subcommand_has_help_and_shows_its_default():
    import argparse

    from painnfx.tools.cli import build_parser

    parsers = [build_parser()]
    checked = 0
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
            checked += 1
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                    and not isinstance(action, argparse._HelpAction) and "default" not in (action.help or ""):
                assert f"(default: {action.default})" in text, (parser.prog, action.option_strings)
    assert checked > 60
    md = " ".join(_help("md").split())
    assert "(default: 200)" in md and "(default: 300.0)" in md


# -- the batch API checks everything first ---------------------------------------------------------------------

def test_evaluate_names_every_bad_structure_before_the_model_runs(monkeypatch):
    import painnfx.model.batch as batch

    def never(*args, **kwargs):
        raise AssertionError("the model ran before the checks")

    monkeypatch.setattr(batch.BatchEvaluator, "run_packed", never)
    nan = _cu(1)
    nan.positions[0, 0] = np.nan
    frames = [_cu(1), nan, None, _cu(1), "Cu", molecule("H2O")]
    with pytest.raises(InputError) as err:
        batch_evaluate(frames, _model())
    text = str(err.value)
    assert "4 of 6 structures" in text
    for index, reason in ((1, "NaN"), (2, "got NoneType None"), (4, "got str 'Cu'"), (5, "unknown element")):
        assert f"structure {index}: " in text and reason in text, text


def test_iter_evaluate_turns_wrong_types_into_failed_records():
    results = list(iter_evaluate([_cu(1), None, 3.5, _cu(1)], _model()))
    assert [type(r).__name__ for r in results] == ["Atoms", "Failed", "Failed", "Atoms"]
    assert results[1].index == 1 and "expected an ase.Atoms" in results[1].reason


def test_reloading_the_same_weights_keeps_the_compiled_joint_graph():
    model = _model()
    fast = optimize(model)
    fast.path, fast.joint, fast.joint_graphs = "auto", True, JointGraphs(compile=False)
    atoms = _cu()
    evaluate(fast, atoms)
    graphs = fast.joint_graphs
    model.load_state_dict(model.state_dict())  # copies in place: the baked buffers' versions move, not their values
    evaluate(fast, atoms)
    assert fast.joint_graphs is graphs and fast.runner.rebinds == 0
    _replace_all(model)
    evaluate(fast, atoms)
    assert fast.joint_graphs is not graphs and fast.runner.rebinds == 1
