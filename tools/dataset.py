"""Training data from a teacher available offline: ASE's EMT calculator.

``generate(n, seed)`` draws a deterministic mix of configurations for one element (or an
alloy): rattled and strained bulk, vacancies, (111) surfaces, clusters and snapshots of short
Langevin MD, and labels each with EMT energy, forces and (periodic cells) stress.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron, Octahedron

#: elements EMT supports (fcc metals with parameters, plus H, C, N, O for mixtures)
EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O")
LATTICE = {"Al": 4.05, "Cu": 3.61, "Ag": 4.09, "Au": 4.08, "Ni": 3.52, "Pd": 3.89, "Pt": 3.92}
KINDS = ("bulk", "strained", "vacancy", "surface", "cluster", "md")
WEIGHTS = (0.3, 0.2, 0.1, 0.15, 0.1, 0.15)


@dataclass
class Sample:
    atoms: Atoms
    kind: str
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None


def _alloy(atoms: Atoms, elements, rng) -> Atoms:
    if len(elements) > 1:
        atoms.symbols = rng.choice(np.array(elements), size=len(atoms))
    return atoms


def _random_strain(rng, size: float) -> np.ndarray:
    e = rng.uniform(-size, size, (3, 3))
    return 0.5 * (e + e.T)


def make_structure(kind: str, elements, rng) -> Atoms:
    host = elements[0]
    a = LATTICE[host]
    if kind in ("bulk", "vacancy", "md"):
        atoms = bulk(host, "fcc", a=a * rng.uniform(0.98, 1.03), cubic=True) * (2, 2, 2)
        if kind == "vacancy":
            del atoms[int(rng.integers(len(atoms)))]
    elif kind == "strained":
        atoms = bulk(host, "fcc", a=a, cubic=True) * (2, 2, 2)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + _random_strain(rng, 0.04)), scale_atoms=True)
    elif kind == "surface":
        atoms = fcc111(host, size=(2, 2, 4), a=a, vacuum=6.0)
    elif kind == "cluster":
        atoms = Icosahedron(host, 2, latticeconstant=a) if rng.random() < 0.5 else Octahedron(host, 3, latticeconstant=a)
        atoms.center(vacuum=6.0)
        atoms.pbc = False
    else:
        raise ValueError(f"unknown kind {kind!r}")
    atoms = _alloy(atoms, elements, rng)
    atoms.rattle(stdev=float(rng.uniform(0.02, 0.12)), seed=int(rng.integers(2**31)))
    if kind == "md":
        from ase import units
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        temperature = float(rng.uniform(300, 1500))
        atoms.calc = EMT()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02, rng=rng).run(int(rng.integers(20, 60)))
        atoms = atoms.copy()
    return atoms


def label(atoms: Atoms, kind: str) -> Sample:
    atoms = atoms.copy()
    atoms.calc = EMT()
    stress = atoms.get_stress() if atoms.pbc.all() else None
    return Sample(atoms, kind, float(atoms.get_potential_energy()), atoms.get_forces().copy(), stress)


def check_elements(elements) -> None:
    """ValueError unless EMT knows every element and the first is an fcc host metal."""
    bad = [e for e in elements if e not in EMT_ELEMENTS]
    if bad:
        raise ValueError(f"EMT has no parameters for {bad}; it supports {EMT_ELEMENTS}")
    if elements[0] not in LATTICE:
        raise ValueError(f"the first element must be an fcc metal of {sorted(LATTICE)}")


def generate(n: int, seed: int, elements=("Cu",)) -> list[Sample]:
    check_elements(elements)
    rng = np.random.default_rng(seed)
    kinds = rng.choice(np.array(KINDS), size=n, p=np.array(WEIGHTS))
    return [label(make_structure(str(k), list(elements), rng), str(k)) for k in kinds]
