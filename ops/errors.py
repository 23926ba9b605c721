"""Error types shared by every layer (defined here, at the bottom, so that all layers can raise them).

Every error painnfx raises on purpose derives from :class:`PainnfxError` and from the built-in
type a caller would expect (``ValueError`` for bad input, ``TypeError`` for a wrong kind of
object), so ``except painnfx.ops.errors.PainnfxError`` catches all of them and nothing else.
"""

import pickle


class PainnfxError(Exception):
    """Base of the errors painnfx raises with a message for the user."""


class InputError(PainnfxError, ValueError):
    """Input the model or an op cannot evaluate meaningfully (NaN positions, overlapping atoms,
    unknown element, wrong dtype/device/shape, out-of-range edge indices, too many neighbors, ...)."""


class ModelChangedError(PainnfxError, RuntimeError):
    """The model an optimized model wraps changed in a way that the optimized graph cannot follow
    (a parameter's dtype, device or shape, or a constant compiled into the fused ops): call
    ``optimize()`` again on the changed model."""


class NonFiniteError(PainnfxError, FloatingPointError):
    """The model returned a non-finite energy, force or stress (non-finite weights, or a structure
    far outside anything the model can describe)."""


class NotPicklableError(PainnfxError, pickle.PicklingError):
    """An object that is rebuilt rather than pickled (an optimized model): the message names what
    to save instead."""
