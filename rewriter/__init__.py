"""painnfx.rewriter: capture a PaiNN energy graph with torch.fx, match its radial basis,
cutoff, filter and message subgraphs, and replace them with verified fused ops.

    from painnfx.rewriter import optimize
    fast = optimize(model)          # same call signature, same energies/forces/stress
    print(fast.report.to_text())    # what matched, what was fused, what was rejected
"""

from .optimize import NotAnEnergyModel, optimize
from .optimized_model import OptimizedModel

__all__ = ["optimize", "OptimizedModel", "NotAnEnergyModel"]
