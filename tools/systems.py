"""The standard benchmark set: small molecules, a 50-atom alkane and Cu fcc supercells."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule


def alkane(n_carbon: int = 16) -> Atoms:
    """A zig-zag n-alkane C_nH_{2n+2} (C16H34 has 50 atoms)."""
    cc, ch, half = 1.54, 1.09, np.deg2rad(109.5) / 2
    dx, dy = cc * np.sin(half), cc * np.cos(half)
    carbons = np.array([[k * dx, (k % 2) * dy, 0.0] for k in range(n_carbon)])
    symbols, pos = [], []
    for k, c in enumerate(carbons):
        symbols.append("C")
        pos.append(c)
        side = -1.0 if k % 2 == 0 else 1.0
        for z in (-1.0, 1.0):
            symbols.append("H")
            pos.append(c + ch * np.array([0.0, side * np.cos(half), z * np.sin(half)]))
    for end, sign in ((0, -1.0), (n_carbon - 1, 1.0)):
        symbols.append("H")
        pos.append(carbons[end] + ch * np.array([sign, 0.0, 0.0]))
    return Atoms(symbols, positions=pos)


def copper(repeat) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
    atoms.rattle(0.02, seed=0)
    return atoms


def standard_systems() -> dict[str, Atoms]:
    return {
        "H2O": molecule("H2O"),
        "CH4": molecule("CH4"),
        "benzene": molecule("C6H6"),
        "C16H34": alkane(16),
        "Cu500": copper((5, 5, 5)),
        "Cu2048": copper((8, 8, 8)),
        "Cu8000": copper((20, 10, 10)),
    }


def gpu_systems() -> dict[str, Atoms]:
    systems = standard_systems()
    systems.update({"Cu32000": copper((20, 20, 20)), "Cu108000": copper((30, 30, 30))})
    return systems


def system(name: str) -> Atoms:
    """A system of the standard or GPU set by name, or ``CuN<n>``: an n x n x n cubic Cu cell (4 n^3 atoms)."""
    import re

    m = re.fullmatch(r"CuN(\d+)", name)
    if m:
        n = int(m.group(1))
        return copper((n, n, n))
    systems = gpu_systems()
    if name not in systems:
        raise KeyError(f"unknown system {name!r}; known: {sorted(systems)} or CuN<n>")
    return systems[name]


#: how many structures of what the throughput benchmark evaluates (``painnfx bench --throughput``)
SMALL_MOLECULES = ("H2O", "CH4", "C6H6", "CH3CH2OH")


def small_molecules(n: int) -> list[Atoms]:
    """``n`` small molecules (water, methane, benzene, ethanol in turn), each rattled by 0.05 A."""
    out = []
    for k in range(n):
        atoms = molecule(SMALL_MOLECULES[k % len(SMALL_MOLECULES)])
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def copper_cells(n: int, repeat=(3, 3, 3)) -> list[Atoms]:
    """``n`` Cu fcc cells (108 atoms for 3x3x3), each rattled by 0.05 A with its own seed."""
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def structure_sets() -> dict:
    """The throughput benchmark's sets, by name: functions returning lists of structures."""
    return {"mol64": lambda: small_molecules(64), "mol512": lambda: small_molecules(512),
            "Cu108x16": lambda: copper_cells(16)}
