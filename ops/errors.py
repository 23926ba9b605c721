"""Error types shared by every layer (defined here, at the bottom, so that all layers can raise them)."""


class InputError(ValueError):
    """Input the model or an op cannot evaluate meaningfully (NaN positions, overlapping atoms,
    unknown element, wrong dtype/device/shape, out-of-range edge indices, ...)."""
