"""A painnfx model as an OpenMM force (``openmm.PythonForce``, OpenMM >= 8.6).

OpenMM calls the computation with a ``State`` (positions in nm, and the periodic box when the
force is periodic) and wants the energy in kJ/mol and forces in kJ/mol/nm. :class:`PaiNNOpenMM`
converts units, builds the neighbor list (vesin) and evaluates through the same
:class:`~painnfx.model.calculator.PaiNNCalculator` as ASE, input checks included. It is picklable
(plain data only, see ``engine_model``), so ``XmlSerializer`` can save a System that uses it.

    from painnfx.model.openmm_force import painn_force
    system.addForce(painn_force(numbers, model=None, periodic=True))   # default Cu model

``particles`` applies the model to a subset of the System's particles (a PaiNN region inside a
classical system); the other particles do not exist for the model.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from ase import Atoms, units

from .engine_model import EngineModel

EV_TO_KJ_PER_MOL = units.mol / units.kJ  # 96.485...
NM = 10.0  # Angstrom per nm


class PaiNNOpenMM(EngineModel):
    """OpenMM ``PythonForce`` computation for a painnfx PaiNN on atoms of atomic numbers ``numbers``
    (in the order of the particles the force applies to)."""

    def __init__(self, numbers: Sequence[int], model=None, *, periodic: bool = False,
                 dtype: torch.dtype = torch.float64, device: str = "cpu", optimize="auto"):
        super().__init__(model, dtype=dtype, device=device, optimize=optimize,
                         numbers=[int(z) for z in numbers], periodic=bool(periodic))

    def _configure(self) -> None:
        self.numbers = np.asarray(self._state["numbers"], dtype=np.int64)
        self.periodic = self._state["periodic"]
        self.atoms = Atoms(numbers=self.numbers, pbc=self.periodic)

    def __call__(self, state):
        from openmm.unit import nanometer

        pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(nanometer), dtype=np.float64) * NM
        atoms = self.atoms
        atoms.calc = self.calc
        if len(pos) != len(atoms):
            raise ValueError(f"painnfx: the force was made for {len(atoms)} particles, OpenMM passed {len(pos)}")
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(nanometer)
            atoms.set_cell(np.asarray(box, dtype=np.float64) * NM)
        atoms.set_positions(pos)
        energy = atoms.get_potential_energy() * EV_TO_KJ_PER_MOL
        forces = atoms.get_forces() * (EV_TO_KJ_PER_MOL * NM)
        return energy, forces


def painn_force(numbers: Sequence[int], model=None, *, periodic: bool = False,
                particles: Optional[Sequence[int]] = None, **kwargs):
    """An ``openmm.PythonForce`` evaluating the model (None: the default Cu model) on the
    System's particles (or on ``particles``, whose atomic numbers are ``numbers``)."""
    import openmm

    if particles is not None and len(particles) != len(numbers):
        raise ValueError(f"{len(particles)} particles but {len(numbers)} atomic numbers")
    force = openmm.PythonForce(PaiNNOpenMM(numbers, model, periodic=periodic, **kwargs))
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    if particles is not None:
        force.setParticles([int(p) for p in particles])
    force.setName("painnfx PaiNN")
    return force
