"""One declaration per fused op: ``FusedOp`` generates everything torch needs from it.

From a typed signature (whose body is the op's shape checks), a fake, a reference forward and,
for a differentiable op, a reference backward and the names of the inputs it differentiates,
``FusedOp`` makes:

* ``op``: the ``painnfx::<name>`` torch.library custom op (schema inferred from the signature),
  its fake, and its autograd formula; its implementation is ``dispatch.run`` (the backend of
  the tensors' device), with the reference implementation registered for every device;
* ``backward_op``: ``painnfx::<name>_backward(grad outputs..., inputs...[, bool weight_grad])``,
  one output per differentiated input (an empty tensor where it was not computed: an absent
  optional input, or weights not asked for), with its fake, dispatched the same way;
* ``call``: what the rewritten graph calls. Running eagerly (or under a torch.func transform)
  it applies an ``autograd.Function`` that calls the dispatched implementation with none of
  torch.library's Python layers (on a 3-atom molecule a third of the fused path's time); the
  Function has a ``setup_context``, so ``torch.func.grad``/``vmap`` accept it, which the
  Function torch.library generates does not (pytorch/pytorch#168393). Under compile, tracing
  or export it calls ``op``: one opaque node.

The backward: with grad mode on (``create_graph=True``, or any torch.func transform), the
differentiable reference backward (so double backward and nested transforms work on every
backend); otherwise ``backward_op``'s implementation, under the backend override recorded at
forward time (autograd may run the backward on another thread). Weight gradients are computed
only when the running backward will reach the weights (``_weights_used``): forces of a model with
trainable weights skip them, as autograd prunes a plain model's parameter gradients.
``inline_reference(names)`` makes ``call`` run those ops as their reference torch ops instead (the
joint graphs trace the update block so, rewriter/joint.py). A new fused op is then one
declaration plus its reference math and kernels.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
from typing import Callable, Optional, Sequence

import torch

from . import dispatch
from .checks import eager

_EMPTY = (0,)
_NO_DEFAULT = inspect.Parameter.empty
_DECLARED: dict = {}  # name -> FusedOp; the generated Functions look themselves up here, so that
                      # Dynamo, tracing one inside a transform, reaches it through a global


_inlined = threading.local()  # .names: fused ops that run as their reference torch ops on this thread


@contextlib.contextmanager
def inline_reference(names):
    """In this block (this thread), the fused ops ``names`` run as their reference implementation
    in plain differentiable torch ops, which autograd records op by op: what a tracer that
    compiles the result (the joint graphs, rewriter/joint.py) should see where a compiler's code
    for those ops beats the opaque op."""
    previous = getattr(_inlined, "names", frozenset())
    _inlined.names = previous | frozenset(names)
    try:
        yield
    finally:
        _inlined.names = previous


def declared() -> list:
    """Every ``FusedOp`` declared so far, in declaration order (backends implement them by this list)."""
    return list(_DECLARED.values())


def transformed() -> bool:
    """A torch.func transform (grad, vmap, jacrev) is active on this thread."""
    return torch._C._are_functorch_transforms_active()


def _tensor_list(a) -> bool:
    return isinstance(a, (list, tuple)) and len(a) > 0 and all(isinstance(t, torch.Tensor) for t in a)


def _device_type(args) -> str:
    return next(a for a in args if isinstance(a, torch.Tensor)).device.type


class FusedOp:
    """See the module docstring. ``signature``: a function with the op's annotated arguments and
    return type whose body checks shapes, dtypes and devices (it also runs in the fake, so it must
    not read values). ``value_check``: checks that read values (host syncs), run before the real
    implementation only. ``grads``: input names the backward differentiates, in its output order;
    ``weights``: those among them computed only when asked (a trailing ``bool weight_grad``)."""

    def __init__(self, name: str, signature: Callable, fake: Callable, reference: Callable,
                 reference_backward: Optional[Callable] = None, grads: Sequence[str] = (),
                 weights: Sequence[str] = (), value_check: Optional[Callable] = None):
        self.name, self.backward_name = name, f"{name}_backward"
        _DECLARED[name] = self
        self._signature = inspect.signature(signature)
        self._check, self._fake, self._value_check = signature, fake, value_check
        self._reference, self._reference_backward = reference, reference_backward
        names = list(self._signature.parameters)
        self._n_params = len(names)
        self._defaults = [p.default for p in self._signature.parameters.values()]
        self._grad_positions = [names.index(g) for g in grads]
        self._weight_positions = [names.index(w) for w in weights]
        self._weight_flag = bool(weights)
        schema = torch.library.infer_schema(signature, mutates_args=())
        self.op = torch.library.custom_op(f"painnfx::{name}", self._body, mutates_args=(), schema=schema)
        self.op.register_fake(self._fake_forward)
        dispatch.define(name, self.op)
        self._python_cpu_kernel(self.op, self._body)
        dispatch.implement(name, dispatch.REFERENCE, reference)
        self.backward_op = None
        if grads:
            self._n_outputs = schema.split("->")[1].count("Tensor")
            self.backward_op = torch.library.custom_op(
                f"painnfx::{self.backward_name}", self._backward_body, mutates_args=(),
                schema=self._backward_schema(schema, len(grads)))
            self.backward_op.register_fake(self._fake_backward)
            self.op.register_autograd(self._library_backward, setup_context=self._setup_context)
            dispatch.define(self.backward_name, self.backward_op)
            self._python_cpu_kernel(self.backward_op, self._backward_body)
            dispatch.implement(self.backward_name, dispatch.REFERENCE, reference_backward)
            self._function, self._eager = self._make_functions()

    def _python_cpu_kernel(self, op, body: Callable) -> None:
        """``body`` as ``op``'s CPU kernel where torch's Python dispatcher is on: what
        ``dispatch.use_backend`` turns on to send dispatcher-level calls on CPU tensors (a compiled
        graph, ``opcheck``) to a forced Python backend instead of the C++ kernel."""
        arguments = op._opoverload._schema.arguments

        def kernel(*args, **kwargs):
            if kwargs:  # positional, in the schema's order, as the bodies take them
                args = (*args, *(kwargs[a.name] if a.name in kwargs else a.default_value
                                 for a in arguments[len(args):]))
            return body(*args)

        op._opoverload.py_impl(torch._C.DispatchKey.CPU)(kernel)

    # -- schema --------------------------------------------------------------------------------
    def _backward_schema(self, schema: str, n_grads: int) -> str:
        inputs = re.sub(r"=[^,)]*", "", schema[schema.index("(") + 1: schema.rindex(") ->")])
        grad_outputs = ", ".join(f"Tensor grad_{k}" for k in range(self._n_outputs))
        flag = ", bool weight_grad" if self._weight_flag else ""
        return f"({grad_outputs}, {inputs}{flag}) -> ({', '.join(['Tensor'] * n_grads)})"

    def _bind(self, args) -> tuple:
        """``args`` with the defaults of the arguments left out (no inspect on the hot path)."""
        if len(args) <= self._n_params and all(d is not _NO_DEFAULT for d in self._defaults[len(args):]):
            return (*args, *self._defaults[len(args):])
        bound = self._signature.bind(*args)
        bound.apply_defaults()
        return tuple(bound.args)

    # -- forward -------------------------------------------------------------------------------
    def _body(self, *args):
        implementation, native = dispatch.select(self.name, _device_type(args), *args)
        if not native:  # a native kernel checks its arguments itself (the same conditions, in C++)
            self._check(*args)
            if self._value_check is not None:
                self._value_check(*args)
        return implementation(*args)

    def _fake_forward(self, *args):
        self._check(*args)
        return self._fake(*args)

    def __call__(self, *args):
        return self.call(*args)

    def call(self, *args):
        """The op as the rewritten graph calls it (see the module docstring)."""
        args = self._bind(args)
        if self.name in getattr(_inlined, "names", ()):
            return self._reference(*args)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if self.backward_op is None:  # nothing to differentiate (integer bookkeeping)
            if eager(*tensors):
                return self._body(*args)
            return self.op(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
        if eager(*tensors):
            return self._eager.apply(*[tuple(a) if _tensor_list(a) else a for a in args])
        if transformed():
            return self._function.apply(*[tuple(a) if _tensor_list(a) else a for a in args])
        return self.op(*[list(a) if _tensor_list(a) else a for a in args])

    # -- backward ------------------------------------------------------------------------------
    def _backward_body(self, *args):
        grads = dispatch.run(self.backward_name, _device_type(args), *args)
        return tuple(args[0].new_empty(_EMPTY) if g is None else g for g in grads)  # outputs must not alias

    def _skipped(self, inputs, weight_grad: bool) -> list:
        """Per differentiated input: True where the backward leaves it out."""
        return [inputs[p] is None or (p in self._weight_positions and not weight_grad) for p in self._grad_positions]

    def _fake_backward(self, *args):
        inputs = args[self._n_outputs: len(args) - self._weight_flag]
        weight_grad = bool(args[-1]) if self._weight_flag else True
        return tuple(args[0].new_empty(_EMPTY) if skip else torch.empty_like(inputs[p])
                     for p, skip in zip(self._grad_positions, self._skipped(inputs, weight_grad)))

    def _setup_context(self, ctx, inputs, output):
        tensors, layout = [], []
        for a in inputs:
            if isinstance(a, torch.Tensor):
                layout.append(("tensor", len(tensors)))
                tensors.append(a)
            elif _tensor_list(a):
                layout.append(("list", len(tensors), len(a)))
                tensors.extend(a)
            else:
                layout.append(("const", list(a) if isinstance(a, (list, tuple)) else a))
        ctx.save_for_backward(*tensors)
        ctx.layout = layout
        ctx.backend = dispatch.forced()
        ctx.weight_nodes = None

    def _record_weight_nodes(self, ctx, inputs) -> None:
        """(eager) The autograd nodes the weights' gradients flow into, so that the backward can
        skip the weight gradients when the engine will not use them: ``autograd.grad(E,
        positions)`` of a model whose parameters require grad (forces in MD) prunes the
        parameters' accumulators, as autograd does for the plain model's ops."""
        nodes = []
        for p in self._weight_positions:
            a = inputs[p] if p < len(inputs) else None
            if isinstance(a, torch.Tensor) and a.requires_grad:
                nodes.append(torch.autograd.graph.get_gradient_edge(a).node)
        ctx.weight_nodes = nodes

    @staticmethod
    def _weights_used(ctx) -> bool:
        """False when the running backward will not reach any weight's gradient node."""
        nodes = getattr(ctx, "weight_nodes", None)
        if not nodes:
            return True
        try:
            return any(torch._C._will_engine_execute_node(node) for node in nodes)
        except RuntimeError:  # not inside an engine's backward (a traced one): keep them
            return True

    @staticmethod
    def _saved_inputs(ctx) -> list:
        saved = ctx.saved_tensors
        out = []
        for entry in ctx.layout:
            if entry[0] == "tensor":
                out.append(saved[entry[1]])
            elif entry[0] == "list":
                out.append(list(saved[entry[1]: entry[1] + entry[2]]))
            else:
                out.append(entry[1])
        return out

    def _input_grads(self, ctx, grad_outputs, library_op: bool, list_grads: bool) -> list:
        """One gradient (or None) per input, from the saved inputs. ``library_op``: call
        ``backward_op`` (a node for compile and export) rather than its implementation;
        ``list_grads``: a list of tensors gets a list of Nones (torch.library's convention)."""
        need = ctx.needs_input_grad
        inputs = self._saved_inputs(ctx)
        weight_grad = any(p < len(need) and need[p] for p in self._weight_positions)
        if weight_grad and not library_op:
            weight_grad = self._weights_used(ctx)
        args = (*grad_outputs, *inputs, *((weight_grad,) if self._weight_flag else ()))
        if torch.is_grad_enabled():
            grads = self._reference_backward(*args)
        else:
            with dispatch.use_backend(ctx.backend):
                if library_op:
                    grads = self.backward_op(*args)
                else:
                    grads = dispatch.run(self.backward_name, _device_type(args), *args)
        skipped = self._skipped(inputs, weight_grad if self._weight_flag else True)
        out = [[None] * len(a) if (list_grads and _tensor_list(a)) else None for a in inputs]
        for p, g, skip in zip(self._grad_positions, grads, skipped):
            if p < len(need) and need[p] and not skip:
                out[p] = g
        return out[: len(need)]  # a defaulted argument the caller left out has no entry

    def _library_backward(self, ctx, *grad_outputs):
        return tuple(self._input_grads(ctx, grad_outputs, library_op=True, list_grads=True))

    def _make_functions(self):
        """(for torch.func transforms: new-style, with setup_context; for plain eager calls: the
        old style, whose apply skips the per-call ``inspect.signature`` of the new one)."""
        name = self.name

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(*args):
                fused = _DECLARED[name]
                if torch.compiler.is_compiling():  # traced inside a transform: one library node
                    return fused.op(*[list(a) if _tensor_list(a) else a for a in args])
                return fused._body(*args)

            @staticmethod
            def setup_context(ctx, inputs, output):
                _DECLARED[name]._setup_context(ctx, inputs, output)

            @staticmethod
            def backward(ctx, *grad_outputs):
                return tuple(_DECLARED[name]._input_grads(ctx, grad_outputs, library_op=torch.compiler.is_compiling(),
                                                          list_grads=False))

        class Eager(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                fused = _DECLARED[name]
                out = fused._body(*args)
                fused._setup_context(ctx, args, out)
                if fused._weight_flag:
                    fused._record_weight_nodes(ctx, args)
                return out

            @staticmethod
            def backward(ctx, *grad_outputs):
                return tuple(_DECLARED[name]._input_grads(ctx, grad_outputs, library_op=False, list_grads=False))

        title = "".join(w.title() for w in name.split("_"))
        Function.__name__ = Function.__qualname__ = title
        Eager.__name__ = Eager.__qualname__ = f"{title}Eager"
        return Function, Eager
