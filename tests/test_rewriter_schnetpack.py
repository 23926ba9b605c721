"""optimize() on schnetpack NeuralNetworkPotentials, without touching their code."""

import pytest
import torch
from hypothesis import given, settings

from helpers import CPU_KERNELS, assert_fused, assert_kernels, env_import, env_skip, system_tensors
from painnfx.model.painn import PaiNN, PaiNNConfig
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize
from strategies import model_configs, periodic_cells

spk_interop = env_import("painnfx.model.schnetpack_interop")
try:
    spk = spk_interop.import_schnetpack()
except ImportError as exc:  # pragma: no cover
    env_skip(f"schnetpack cannot be imported ({exc})", module=True)

pytestmark = [pytest.mark.schnetpack, pytest.mark.filterwarnings("ignore::UserWarning")]


def _inputs(atoms, cutoff):
    pos, numbers, nl, cell = system_tensors(atoms, cutoff)
    return lambda: spk_interop.schnetpack_inputs(pos, numbers, nl.edge_index, nl.cell_shifts, cell, atoms.pbc,
                                                 stress=True)


@settings(max_examples=6)
@given(model_configs(), periodic_cells(mixed_pbc=False, max_atoms=5))
def test_schnetpack_potential_same_results(cfg, atoms):
    model = PaiNN(PaiNNConfig(**cfg)).double()
    nnpot = spk_interop.to_schnetpack(model, stress=True).eval()  # eval: forces without create_graph (MD)
    fast = optimize(nnpot)
    assert_fused(fast.report, cfg["n_interactions"])
    assert type(nnpot.representation).__name__ == "PaiNN"  # the user's model is untouched
    make = _inputs(atoms, cfg["cutoff"])
    with record_calls() as calls:
        a = fast(make())
    assert_kernels(calls, CPU_KERNELS, cfg["n_interactions"], updates=cfg["n_interactions"])  # forces, stress: one backward
    b = nnpot(make())
    for key in ("energy", "forces", "stress"):
        scale = max(1.0, float(b[key].abs().max()))
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-10 * scale, msg=key)


def test_schnetpack_built_natively_with_bessel_and_shared_filters():
    torch.manual_seed(0)
    rep = spk.representation.PaiNN(n_atom_basis=16, n_interactions=2, radial_basis=spk.nn.BesselRBF(8, 4.0),
                                   cutoff_fn=spk.nn.CosineCutoff(4.0), shared_filters=True)
    nnpot = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.Strain(), spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=16, output_key="energy"),
                        spk.atomistic.Forces(calc_stress=True)],
    ).double().eval()
    fast = optimize(nnpot)
    assert_fused(fast.report, 2)
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    atoms.rattle(0.05, seed=3)
    make = _inputs(atoms, 4.0)
    with record_calls() as calls:
        a = fast(make())
    assert_kernels(calls, CPU_KERNELS, 2)
    b = nnpot(make())
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("basis", ["gaussian", "bessel"])
def test_schnetpack_with_mollifier_cutoff_fuses_every_layer(basis):
    """MollifierCutoff is one entry of the radial-spec registry (ops/radial/mollifier.py) and its
    case in radial.cuh: the rewriter recognises and fuses it with no other change."""
    torch.manual_seed(1)
    rbf = spk.nn.GaussianRBF(10, 4.0) if basis == "gaussian" else spk.nn.BesselRBF(10, 4.0)
    rep = spk.representation.PaiNN(n_atom_basis=16, n_interactions=3, radial_basis=rbf,
                                   cutoff_fn=spk.nn.MollifierCutoff(4.0, eps=1e-7))
    nnpot = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.Strain(), spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=16, output_key="energy"),
                        spk.atomistic.Forces(calc_stress=True)],
    ).double()
    with torch.no_grad():
        for p in nnpot.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = optimize(nnpot.eval())
    report = fast.report
    matched = [m for p in report.passes for m in p.matches]
    assert [m["kind"] for m in matched if m["kind"].endswith("_cutoff")] == ["mollifier_cutoff"], report.to_text()
    cut = next(m for m in matched if m["kind"] == "mollifier_cutoff")
    assert cut["rc"] == 4.0 and abs(cut["eps"] - 1e-7) < 1e-12
    assert sum(m["kind"] == "fused_painn_message" for m in matched) == 3, report.to_text()
    assert_fused(report, 3)
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    atoms.rattle(0.1, seed=5)
    make = _inputs(atoms, 4.0)
    with record_calls() as calls:
        a = fast(make())
    assert_kernels(calls, CPU_KERNELS, 3)
    b = nnpot(make())
    for key in ("energy", "forces", "stress"):
        scale = max(1.0, float(b[key].abs().max()))
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-10 * scale, msg=key)
