"""The fused ops are single nodes for torch.fx, torch.compile(fullgraph=True) and torch.export,
and their implementations are chosen per device by torch's dispatcher."""

import pytest
import torch
import torch.fx

from painnfx.ops import available_backends, dispatch, painn_message, prepare_edges, radial_filter, reference, use_backend

RADIAL = ("gaussian", "cosine", [3.0])


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
        edges = prepare_edges(r, idx_i, idx_j, x.shape[0])
        dq, dmu = painn_message(r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, *RADIAL)
        w = radial_filter(torch.linalg.vector_norm(r, dim=1), weight, bias, basis_params, *RADIAL)
        return dq.sum() + dmu.sum() + w.sum()


def _count(graph, name):
    return sum(1 for n in graph.nodes if n.op == "call_function" and name in str(n.target) and "backward" not in str(n.target))


def test_fx_symbolic_trace_sees_one_node_each():
    gm = torch.fx.symbolic_trace(Block())
    for name in ("prepare_edges", "painn_message", "radial_filter"):
        assert _count(gm.graph, name) == 1
    inp = _inputs()
    torch.testing.assert_close(gm(**inp), Block()(**inp))


def test_torch_export_sees_one_node_each():
    ep = torch.export.export(Block(), tuple(_inputs().values()))
    for name in ("prepare_edges", "painn_message", "radial_filter"):
        assert _count(ep.graph, f"painnfx.{name}") == 1


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
    edges = list(prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], 4))
    torch.library.opcheck(torch.ops.painnfx.prepare_edges.default, (inp["r"], inp["idx_i"], inp["idx_j"], 4))
    args = (inp["r"], inp["idx_i"], inp["idx_j"], edges, inp["x"], inp["mu"], inp["weight"], inp["bias"],
            inp["basis_params"], *RADIAL)
    torch.library.opcheck(torch.ops.painnfx.painn_message.default, args)
    d = torch.rand(7) * 2 + 0.5
    torch.library.opcheck(torch.ops.painnfx.radial_filter.default,
                          (d, inp["weight"], inp["bias"], inp["basis_params"], *RADIAL))


def test_schemas_have_no_backend_argument():
    for op in ("prepare_edges", "painn_message", "painn_message_backward", "radial_filter", "radial_filter_backward"):
        schema = getattr(torch.ops.painnfx, op).default._schema
        assert "backend" not in [a.name for a in schema.arguments], schema


@pytest.fixture
def counting_cpu_backend():
    """A backend registered for "cpu" that counts its calls and runs the reference maths (below the
    C++ kernels: a Python backend runs on the CPU where it is forced)."""
    calls = []

    def wrap(name, fn):
        def impl(*args):
            calls.append(name)
            return fn(*args)
        return impl

    dispatch.register_backend("counting", {"cpu"}, priority=-5)
    dispatch.implement("painn_message", "counting", wrap("forward", reference.message_forward))
    dispatch.implement("painn_message_backward", "counting", wrap("backward", reference.message_backward))
    yield calls
    dispatch.remove_backend("counting")
    assert dispatch.chosen("painn_message", "cpu") == "cpp"


def _energy_and_force(inp):
    r = inp["r"].clone().requires_grad_(True)
    edges = list(prepare_edges(r, inp["idx_i"], inp["idx_j"], 4))
    dq, dmu = painn_message(r, inp["idx_i"], inp["idx_j"], edges, *[inp[k] for k in ("x", "mu", "weight", "bias",
                            "basis_params")], *RADIAL)
    return dq, dmu, r


def test_dispatcher_picks_the_device_backend_and_the_override_reaches_backward(counting_cpu_backend):
    calls = counting_cpu_backend
    assert "counting" in available_backends()
    inp = _inputs()
    with dispatch.record_calls() as ran:
        dq, dmu, r = _energy_and_force(inp)
        torch.autograd.grad(dq.sum() + dmu.sum(), r)
    # chosen by the dispatcher from the tensors' device: the C++ kernels, counted in C++
    assert ran[("painn_message", "cpp")] == 1 and ran[("painn_message_backward", "cpp")] == 1
    assert calls == []
    with use_backend("counting"):
        dq2, dmu2, r2 = _energy_and_force(inp)
    torch.autograd.grad(dq2.sum() + dmu2.sum(), r2)  # backward outside the block: the override was recorded
    assert calls == ["forward", "backward"]
    torch.testing.assert_close(dq2, dq)
    calls.clear()
    with use_backend("counting"):  # double backward runs the differentiable reference path
        dq3, dmu3, r3 = _energy_and_force(inp)
        (g,) = torch.autograd.grad(dq3.sum() + dmu3.sum(), r3, create_graph=True)
    assert calls == ["forward"]
    assert g.requires_grad
    with pytest.raises(ValueError, match="would outrank"):
        dispatch.register_backend("bold", {"cpu"}, priority=5)


def test_unknown_or_unusable_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("nope"):
            pass
    dispatch.register_backend("gpu-only", {"cuda"})
    try:
        dispatch.implement("painn_message", "gpu-only", reference.message_forward)
        with use_backend("gpu-only"), pytest.raises(RuntimeError, match="does not run on cpu"):
            _energy_and_force(_inputs())
    finally:
        dispatch.remove_backend("gpu-only")
