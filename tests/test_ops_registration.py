"""The fused ops are single nodes for torch.fx, torch.compile(fullgraph=True) and torch.export."""

import pytest
import torch
import torch.fx

from painnfx.ops import available_backends, painn_message, radial_filter, use_backend
from painnfx.ops.backends import select


def _inputs(n=4, e=10, f=2, k=3):
    gen = torch.Generator().manual_seed(0)
    return dict(
        r=torch.randn(e, 3, generator=gen) + 0.1, idx_i=torch.randint(0, n, (e,), generator=gen),
        idx_j=torch.randint(0, n, (e,), generator=gen), x=torch.randn(n, 3 * f, generator=gen),
        mu=torch.randn(n, 3, f, generator=gen), weight=torch.randn(3 * f, k, generator=gen),
        bias=torch.randn(3 * f, generator=gen), basis_params=torch.stack([torch.linspace(0, 3, k), torch.ones(k)]),
    )


class Block(torch.nn.Module):
    def forward(self, r, idx_i, idx_j, x, mu, weight, bias, basis_params):
        dq, dmu = painn_message(r, idx_i, idx_j, x, mu, weight, bias, basis_params, "gaussian", 3.0)
        w = radial_filter(torch.linalg.vector_norm(r, dim=1), weight, bias, basis_params, "gaussian", 3.0)
        return dq.sum() + dmu.sum() + w.sum()


def _count(graph, name):
    return sum(1 for n in graph.nodes if n.op == "call_function" and name in str(n.target))


def test_fx_symbolic_trace_sees_one_node_each():
    gm = torch.fx.symbolic_trace(Block())
    assert _count(gm.graph, "painn_message") == 1
    assert _count(gm.graph, "radial_filter") == 1
    inp = _inputs()
    torch.testing.assert_close(gm(**inp), Block()(**inp))


def test_torch_export_sees_one_node_each():
    ep = torch.export.export(Block(), tuple(_inputs().values()))
    assert _count(ep.graph, "painnfx.painn_message") == 1
    assert _count(ep.graph, "painnfx.radial_filter") == 1


def test_torch_compile_fullgraph_forward_and_backward():
    inp = _inputs()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(Block(), backend=backend, fullgraph=True)
    r = inp["r"].clone().requires_grad_(True)
    out = compiled(**dict(inp, r=r))
    (g,) = torch.autograd.grad(out, r)
    r2 = inp["r"].clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(Block()(**dict(inp, r=r2)), r2)
    torch.testing.assert_close(g, g_ref)
    assert len(graphs) == 1
    assert _count(graphs[0].graph, "painn_message") == 1


def test_torch_compile_inductor_energy_and_forces():
    inp = _inputs()
    compiled = torch.compile(Block(), fullgraph=True)
    r = inp["r"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(compiled(**dict(inp, r=r)), r)
    r2 = inp["r"].clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(Block()(**dict(inp, r=r2)), r2)
    torch.testing.assert_close(g, g_ref)


def test_opcheck():
    inp = _inputs()
    args = (*inp.values(), "gaussian", 3.0)
    torch.library.opcheck(torch.ops.painnfx.painn_message.default, args)
    d = torch.rand(7) * 2 + 0.5
    torch.library.opcheck(torch.ops.painnfx.radial_filter.default, (d, inp["weight"], inp["bias"], inp["basis_params"], "gaussian", 3.0))


def test_backend_registry():
    assert "reference" in available_backends()
    assert select(torch.device("cpu")).name == "reference"
    with use_backend("reference"):
        assert select(torch.device("cpu")).name == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("nope"):
            pass


def test_backend_argument_reaches_backward():
    inp = _inputs()
    r = inp["r"].clone().requires_grad_(True)
    dq, dmu = painn_message(r, *list(inp.values())[1:], "gaussian", 3.0, 0, "reference")
    (g,) = torch.autograd.grad(dq.sum() + dmu.sum(), r)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="unknown backend"):
        painn_message(r, *list(inp.values())[1:], "gaussian", 3.0, 0, "tpu")
