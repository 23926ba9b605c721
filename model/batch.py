"""Many structures per call: energy, forces and stress of a list (or a stream) of ``ase.Atoms``.

One call of a PaiNN per small molecule is all overhead: the arithmetic of a water molecule takes
microseconds, the call milliseconds. :func:`evaluate` packs structures into batches, evaluates
each batch as one graph (the model's ``batch`` / ``n_systems`` arguments: atoms of all systems in
one array, each system with its own neighbor list, energies summed per system, one strain per
system for the stress) and hands back, per structure, a copy of the ``ase.Atoms`` with its
results in a ``SinglePointCalculator``, in input order.

* **Bounded memory.** A batch holds at most ``max_atoms`` atoms and ``max_edges`` edges (a single
  structure larger than that runs alone; the default edge bound is larger for the fused graph,
  which keeps no per-edge feature tensors, than for the plain model). :func:`iter_evaluate` reads its input ``window``
  structures at a time, so a stream of any length runs in flat memory (``painnfx eval``).
* **Stable shapes.** Within a window, structures are sorted by size before packing, so batches
  hold structures of similar size and the path rule's size classes (and compiled paths)
  see few distinct shapes.
* **Every structure checked.** Items that are not ``ase.Atoms``, unknown elements, NaN positions,
  degenerate cells, atoms closer than ``min_distance`` and more than ``max_neighbors`` neighbors
  per atom are caught before the model runs: :func:`evaluate` raises one
  :class:`~painnfx.model.validation.InputError` naming every bad structure, :func:`iter_evaluate`
  yields a :class:`Failed` record for each while every good structure is still evaluated. A
  structure whose results come out non-finite is a ``NonFiniteError`` (:func:`evaluate`) or a
  :class:`Failed` record (:func:`iter_evaluate`).
* **The calculator's results.** The model is prepared exactly as ``PaiNNCalculator`` prepares it
  (``optimize="auto"``: the path rule, set up while the job runs), and each structure's energy, forces
  and stress equal the calculator's one-by-one results to rounding.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from .neighbors import cluster_neighbor_lists, neighbor_list
from .properties import compute_properties, voigt
from .validation import (MAX_NEIGHBORS, MIN_DISTANCE, NON_FINITE, InputError, NonFiniteError, check_numbers,
                         check_overlaps, check_positions, check_span)

#: default bounds of one batch. The edge bound depends on the path: the fused graph keeps no
#: per-edge feature tensors (51 MB peak for 37,000 edges at F=128, L=3, float32) and gains from
#: large batches; the plain (eager) model holds ~40 kB per edge (1.9 GB there) and streams each
#: (E, 3F) tensor from memory once it leaves the caches, so beyond ~8000 edges its batches get
#: slower per edge than one call per structure (measured: docs/batch.md)
DEFAULT_MAX_ATOMS = 4096
DEFAULT_MAX_EDGES = 65536
DEFAULT_MAX_EDGES_PLAIN = 8192
#: how many input structures are read, checked and packed at a time by iter_evaluate
DEFAULT_WINDOW = 1024
#: structures without a periodic direction and with at most this many atoms share one neighbor
#: search per window (``neighbors.cluster_neighbor_lists``); others are searched one by one
SHARED_SEARCH_MAX_ATOMS = 128


def atom_offsets(sizes: Sequence[int]) -> np.ndarray:
    """Where each system's atoms start in a batch of systems with ``sizes`` atoms each."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


@dataclass
class Failed:
    """A structure that could not be evaluated: its index in the input and why."""

    index: int
    reason: str


@dataclass
class _System:
    """One checked structure, ready to be packed: its neighbor list is already computed."""

    index: int
    positions: np.ndarray  # (N, 3) float64
    numbers: np.ndarray  # (N,)
    cell: np.ndarray  # (3, 3), rows are lattice vectors
    edge_index: torch.Tensor  # (2, E), local atom indices
    shifts: np.ndarray  # (E, 3) Cartesian, float64
    stress: bool  # stress wanted and periodic in all three directions
    atoms: object = None  # the ase.Atoms it came from, if any

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])


class BatchEvaluator:
    """A model prepared for batched evaluation (as ``PaiNNCalculator`` prepares it) and the
    packing and evaluation of batches. ``model``: a painnfx PaiNN, ``optimize()`` of one, a
    checkpoint path, or None for the default model. ``min_distance`` and ``max_neighbors`` as for
    ``PaiNNCalculator``."""

    def __init__(self, model=None, *, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float64,
                 optimize: Union[bool, str] = "auto", stress: bool = True, min_distance: float = MIN_DISTANCE,
                 max_neighbors: int = MAX_NEIGHBORS):
        from .calculator import PaiNNCalculator

        self.calc = PaiNNCalculator(model, device=device, dtype=dtype, optimize=optimize, min_distance=min_distance,
                                    max_neighbors=max_neighbors)
        self.device, self.dtype = self.calc.device, dtype
        self.stress = stress
        self.source = None  # what evaluator_for made it from

    @classmethod
    def from_calculator(cls, calc, stress: bool = True) -> "BatchEvaluator":
        """Batches through ``calc``'s own prepared model and settings (nothing is loaded or optimized again)."""
        self = cls.__new__(cls)
        self.calc, self.device, self.dtype, self.stress, self.source = calc, calc.device, calc.dtype, stress, calc
        return self

    @property
    def evaluator(self):
        return self.calc.evaluator

    @property
    def default_max_edges(self) -> int:
        """The edge bound of a batch when none is given: larger for the fused graph (see above)."""
        return DEFAULT_MAX_EDGES if self.calc.optimized else DEFAULT_MAX_EDGES_PLAIN

    def prepare(self, index: int, atoms) -> _System:
        """Check one ``ase.Atoms`` and compute its neighbor list; raises InputError naming the problem."""
        from ase import Atoms

        if not isinstance(atoms, Atoms):
            raise InputError(f"expected an ase.Atoms, got {type(atoms).__name__}"
                             + (f" {atoms!r}" if atoms is None or isinstance(atoms, (str, int, float)) else ""))
        return self.prepare_arrays(index, atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc, atoms)

    def prepare_arrays(self, index: int, positions, numbers, cell, pbc, atoms=None, neighbors=None) -> _System:
        """The same for plain arrays: positions (N, 3), numbers (N,), cell (3, 3) rows, pbc (3,);
        ``neighbors``: a ``SkinNeighborList`` kept for this system along a trajectory (else one search)."""
        calc = self.calc
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        check_numbers(numbers, calc.elements, calc.max_z)
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        if neighbors is None:
            nl = neighbor_list(pos, calc.cutoff, cell, pbc, dtype=torch.float64, max_neighbors=calc.max_neighbors)
        else:
            nl = neighbors(pos, cell, pbc, dtype=torch.float64)
        ei = nl.edge_index
        r = torch.from_numpy(pos)
        check_overlaps(ei, r[ei[1]] - r[ei[0]] + nl.shifts, calc.min_distance)
        return _System(index, pos, numbers, cell, ei, nl.shifts.numpy(), bool(self.stress and pbc.all()), atoms)

    def shares_search(self, atoms) -> bool:
        """Whether ``atoms`` joins the window's shared neighbor search (``prepare_clusters``): an
        ``ase.Atoms`` with no periodic direction and few enough atoms that none can have more than
        ``max_neighbors`` neighbors."""
        from ase import Atoms

        return (isinstance(atoms, Atoms) and not atoms.pbc.any()
                and len(atoms) <= min(SHARED_SEARCH_MAX_ATOMS, self.calc.max_neighbors + 1))

    def prepare_clusters(self, items: Sequence[tuple]) -> List[_System]:
        """``prepare`` of many (index, ase.Atoms) pairs that ``shares_search`` admits, with one
        neighbor search and each check run once over all of them. Raises InputError if any fails a
        check (the caller then prepares each alone, to name it)."""
        calc = self.calc
        positions = [np.asarray(a.positions, dtype=np.float64).reshape(-1, 3) for _, a in items]
        numbers = [np.asarray(a.numbers, dtype=np.int64).reshape(-1) for _, a in items]
        cells = [np.asarray(a.cell.array, dtype=np.float64) for _, a in items]
        every = np.concatenate(positions)
        check_numbers(np.concatenate(numbers), calc.elements, calc.max_z)
        check_positions(every)
        check_span(every, calc.cutoff, np.zeros((3, 3)), np.zeros(3, dtype=bool))
        if not np.isfinite(np.stack(cells)).all():
            raise InputError("cell contains NaN or inf")
        lists = cluster_neighbor_lists(positions, calc.cutoff)
        offsets = atom_offsets([len(p) for p in positions])
        edges = torch.cat([nl.edge_index + int(o) for nl, o in zip(lists, offsets)], dim=1)
        r = torch.from_numpy(every)
        check_overlaps(edges, r[edges[1]] - r[edges[0]], calc.min_distance)
        return [_System(index, p, z, cell, nl.edge_index, nl.shifts.numpy(), False, atoms)
                for (index, atoms), p, z, cell, nl in zip(items, positions, numbers, cells, lists)]

    def run_packed(self, systems: Sequence[_System]):
        """Evaluate ``systems`` as one batch, in the order given: ``Properties`` with energy
        (n_systems,), forces (N, 3) (atoms in order) and, when any system wants it, stress
        (n_systems, 3, 3) (NaN for systems without a 3D cell)."""
        dt, dev = self.dtype, self.device
        sizes = [s.n_atoms for s in systems]
        offsets = atom_offsets(sizes)
        positions = torch.as_tensor(np.concatenate([s.positions for s in systems]), dtype=dt, device=dev)
        numbers = torch.as_tensor(np.concatenate([s.numbers for s in systems]), dtype=torch.long, device=dev)
        edge_index = torch.cat([s.edge_index + int(o) for s, o in zip(systems, offsets)], dim=1).to(dev)
        shifts = torch.as_tensor(np.concatenate([s.shifts for s in systems]), dtype=dt, device=dev)
        batch = torch.repeat_interleave(torch.arange(len(systems)), torch.tensor(sizes)).to(dev)
        cells = torch.as_tensor(np.stack([s.cell for s in systems]), dtype=dt, device=dev)
        return compute_properties(self.evaluator, positions, numbers, edge_index, shifts, cells,
                                  stress=any(s.stress for s in systems), batch=batch, n_systems=len(systems))

    def run_checked(self, systems: Sequence[_System]):
        """``run_packed``, raising ``NonFiniteError`` that names every system (its ``index``) whose
        energy, forces or stress came out NaN or inf."""
        out = self.run_packed(systems)
        bad = self._non_finite(systems, out)
        if bad:
            raise _non_finite_error(bad)
        return out

    @staticmethod
    def _non_finite(systems: Sequence[_System], out) -> list:
        """The indices of ``systems`` whose results in ``out`` (``run_packed``'s) hold NaN or inf."""
        energy = torch.isfinite(out.energy.detach()).cpu().numpy()
        rows = torch.isfinite(out.forces.detach()).all(dim=1).cpu().numpy()
        stress = (np.ones(len(systems), dtype=bool) if out.stress is None
                  else torch.isfinite(out.stress.detach()).flatten(1).all(dim=1).cpu().numpy())
        if energy.all() and rows.all() and stress.all():
            return []
        offsets = atom_offsets([s.n_atoms for s in systems])
        return [s.index for k, (s, o) in enumerate(zip(systems, offsets))
                if not (energy[k] and rows[o:o + s.n_atoms].all() and (stress[k] or not s.stress))]

    def run(self, systems: Sequence[_System]) -> list:
        """Evaluate ``systems`` as one batch; returns a copy of each one's atoms with its results, or
        a :class:`Failed` record for a structure whose results came out non-finite."""
        empty = [s for s in systems if s.n_atoms == 0]  # nothing to evaluate: energy 0, no forces
        if empty:
            results = {s.index: self._result(s, 0.0, np.zeros((0, 3)), np.zeros((3, 3)) if s.stress else None)
                       for s in empty}
            rest = iter(self.run([s for s in systems if s.n_atoms]))
            return [results[s.index] if s.n_atoms == 0 else next(rest) for s in systems]
        if not systems:
            return []
        out = self.run_packed(systems)
        bad = set(self._non_finite(systems, out))
        energies = out.energy.double().cpu().numpy()
        forces = out.forces.double().cpu().numpy()
        stresses = None if out.stress is None else out.stress.double().cpu().numpy()
        offsets = atom_offsets([s.n_atoms for s in systems])
        return [Failed(s.index, NON_FINITE) if s.index in bad
                else self._result(s, energies[k], forces[o:o + s.n_atoms], stresses[k] if s.stress else None)
                for k, (s, o) in enumerate(zip(systems, offsets))]

    @staticmethod
    def _result(system: _System, energy: float, forces: np.ndarray, stress: Optional[np.ndarray]):
        from ase.calculators.singlepoint import SinglePointCalculator

        from ase import Atoms

        atoms = system.atoms.copy() if system.atoms is not None else Atoms(
            numbers=system.numbers, positions=system.positions, cell=system.cell)
        results = dict(energy=float(energy), free_energy=float(energy), forces=np.array(forces))
        if stress is not None:
            results["stress"] = voigt(stress)
        atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def _non_finite_error(indices: Sequence[int]) -> NonFiniteError:
    """The error naming the structures (input indices) whose results came out NaN or inf."""
    return NonFiniteError(f"non-finite results for structure(s) {', '.join(str(i) for i in indices[:20])}"
                          + (" ..." if len(indices) > 20 else "") + f": {NON_FINITE}")


def pack(systems: Sequence[_System], max_atoms: int, max_edges: int) -> List[List[_System]]:
    """Split ``systems`` into batches of at most ``max_atoms`` atoms and ``max_edges`` edges,
    structures of similar size together (sorted by atoms, then edges). A structure above either
    bound forms a batch of its own."""
    if max_atoms < 1 or max_edges < 1:
        raise ValueError(f"max_atoms and max_edges must be positive, got {max_atoms}, {max_edges}")
    batches, current, atoms, edges = [], [], 0, 0
    for s in sorted(systems, key=lambda s: (s.n_atoms, s.n_edges, s.index)):
        if current and (atoms + s.n_atoms > max_atoms or edges + s.n_edges > max_edges):
            batches.append(current)
            current, atoms, edges = [], 0, 0
        current.append(s)
        atoms += s.n_atoms
        edges += s.n_edges
    if current:
        batches.append(current)
    return batches


def _prepare(evaluator: BatchEvaluator, chunk) -> tuple:
    """(checked systems, {index: Failed}) of ``chunk``'s (index, item) pairs: every check runs before
    the model does. Small molecules and clusters share one neighbor search; if one of them fails a
    check, each is prepared alone, so that the message names it and the others still run."""
    ready, failed = [], {}

    def each_alone(items) -> None:
        for index, atoms in items:
            try:
                ready.append(evaluator.prepare(index, atoms))
            except InputError as exc:
                failed[index] = Failed(index, str(exc))

    chunk = list(chunk)
    joins = [evaluator.shares_search(atoms) for _, atoms in chunk]
    each_alone(item for item, joined in zip(chunk, joins) if not joined)
    shared = [item for item, joined in zip(chunk, joins) if joined]
    if shared:
        try:
            ready += evaluator.prepare_clusters(shared)
        except InputError:
            each_alone(shared)
    return ready, failed


def _run(evaluator: BatchEvaluator, ready: list, max_atoms: int, max_edges: int, bar) -> dict:
    """{index: result or Failed} of the checked systems ``ready``, in batches."""
    results = {}
    for group in pack(ready, max_atoms, max_edges):
        for system, result in zip(group, evaluator.run(group)):
            results[system.index] = result
        bar.update(len(group))
    return results


def iter_evaluate(frames: Iterable, model=None, *, device: Union[str, torch.device] = "cpu",
                  dtype: torch.dtype = torch.float64, optimize: Union[bool, str] = "auto",
                  max_atoms: int = DEFAULT_MAX_ATOMS, max_edges: Optional[int] = None, window: int = DEFAULT_WINDOW,
                  stress: bool = True, progress: Optional[bool] = None, total: Optional[int] = None,
                  evaluator: Optional[BatchEvaluator] = None, min_distance: float = MIN_DISTANCE,
                  max_neighbors: int = MAX_NEIGHBORS) -> Iterator[Union[object, Failed]]:
    """Yield, for each structure of ``frames`` in input order, a copy of its ``ase.Atoms`` with
    energy, forces and (fully periodic structures, ``stress=True``) stress in a
    ``SinglePointCalculator``, or a :class:`Failed` record for a structure that cannot be
    evaluated (an item that is not ``ase.Atoms``, a structure that fails a check, results that
    came out non-finite). ``frames`` may be any iterable (a generator reading a file): ``window``
    structures are held at a time; ``max_edges`` None: 65536 for the fused graph, 8192 for the
    plain model. ``progress``: a progress bar on stderr (None: only when stderr is a terminal);
    ``total``, the number of structures if known, for the bar. ``evaluator``: a prepared
    :class:`BatchEvaluator` to reuse (then ``model``, ``device``, ``dtype``, ``optimize``,
    ``stress``, ``min_distance`` and ``max_neighbors`` are its own); without it, ``model`` is
    prepared once per process as for :func:`evaluate`."""
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    from tqdm.auto import tqdm

    if evaluator is None:
        evaluator = evaluator_for(model, device=device, dtype=dtype, optimize=optimize, stress=stress,
                                  min_distance=min_distance, max_neighbors=max_neighbors)
    max_edges = max_edges or evaluator.default_max_edges
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)
    stream = enumerate(frames)
    with tqdm(total=total, unit="structure", disable=(None if progress is None else not progress),
              leave=False) as bar:
        while True:
            chunk = list(islice(stream, window))
            if not chunk:
                return
            ready, results = _prepare(evaluator, chunk)
            bar.update(len(results))
            results.update(_run(evaluator, ready, max_atoms, max_edges, bar))
            for index, _ in chunk:
                yield results.pop(index)


#: prepared evaluators kept for reuse in this process, the last ``_KEPT``: (model key, settings) -> BatchEvaluator
_EVALUATORS: "OrderedDict[tuple, BatchEvaluator]" = OrderedDict()
_KEPT = 8
#: how often evaluate()/iter_evaluate() prepared a new evaluator and how often they reused one
reuse_counts = {"prepared": 0, "reused": 0}


def _model_key(model):
    """What identifies ``model`` for reuse: "default", a checkpoint file's path, size and mtime, or
    the model object itself (a PaiNN or optimize() of one: its weights may change in place, which
    the optimized model follows)."""
    if model is None:
        return ("default",)
    if isinstance(model, (str, os.PathLike)):
        try:
            st = os.stat(model)
        except OSError:
            return None  # the loader names the problem
        return ("file", os.path.abspath(os.fspath(model)), st.st_size, st.st_mtime_ns)
    return ("object", id(model))


def evaluator_for(model=None, *, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float64,
                  optimize: Union[bool, str] = "auto", stress: bool = True, min_distance: float = MIN_DISTANCE,
                  max_neighbors: int = MAX_NEIGHBORS) -> BatchEvaluator:
    """The prepared :class:`BatchEvaluator` for ``model``: ``model`` itself when it is one, one built
    on a ``PaiNNCalculator``'s own prepared model, else the one this process prepared before for
    the same model (None: the default model; a checkpoint path; a PaiNN or ``optimize()`` of one)
    and settings, made on first use. Preparing (loading, optimizing, compiling) happens once."""
    from .calculator import PaiNNCalculator

    if isinstance(model, BatchEvaluator):
        reuse_counts["reused"] += 1
        return model
    if isinstance(model, PaiNNCalculator):
        found = getattr(model, "_batch_evaluators", {}).get(stress)
        if found is None:
            found = BatchEvaluator.from_calculator(model, stress=stress)
            model._batch_evaluators = {**getattr(model, "_batch_evaluators", {}), stress: found}
            reuse_counts["prepared"] += 1
        else:
            reuse_counts["reused"] += 1
        return found
    key = _model_key(model)
    settings = (str(torch.device(device)), dtype, optimize, stress, float(min_distance), int(max_neighbors))
    if key is not None:
        found = _EVALUATORS.get((key, settings))
        if found is not None and (key[0] != "object" or found.source is model):
            _EVALUATORS.move_to_end((key, settings))
            reuse_counts["reused"] += 1
            return found
    made = BatchEvaluator(model, device=device, dtype=dtype, optimize=optimize, stress=stress,
                          min_distance=min_distance, max_neighbors=max_neighbors)
    made.source = model
    reuse_counts["prepared"] += 1
    if key is not None:
        _EVALUATORS[(key, settings)] = made
        while len(_EVALUATORS) > _KEPT:
            _EVALUATORS.popitem(last=False)
    return made


def evaluate(frames: Iterable, model=None, *, device: Union[str, torch.device] = "cpu",
             dtype: torch.dtype = torch.float64, optimize: Union[bool, str] = "auto",
             max_atoms: int = DEFAULT_MAX_ATOMS, max_edges: Optional[int] = None, stress: bool = True,
             progress: Optional[bool] = None, min_distance: float = MIN_DISTANCE,
             max_neighbors: int = MAX_NEIGHBORS) -> list:
    """Energy, forces and stress of many structures, batched: a list of ``ase.Atoms`` copies in
    input order, each with its results in a ``SinglePointCalculator`` (``atoms.get_forces()``
    etc.). ``frames``: ``ase.Atoms`` of any sizes and elements, periodic or not. Stress (eV/A^3,
    ASE's Voigt order and sign) is given for structures periodic in all three directions. Every
    structure is checked before the model runs: bad ones raise one
    :class:`~painnfx.model.validation.InputError` naming each of them by index (use
    :func:`iter_evaluate` to keep going past bad structures); non-finite results raise
    ``NonFiniteError`` naming the structures. ``device``, ``dtype``, ``optimize``,
    ``min_distance`` and ``max_neighbors`` mean what they mean for ``PaiNNCalculator``. ``model``:
    what ``PaiNNCalculator`` takes (None: the default model), a ``PaiNNCalculator`` or a
    :class:`BatchEvaluator`; it is prepared once per process and reused by later calls
    (``evaluator_for``), so only the first call pays for loading and optimizing."""
    from tqdm.auto import tqdm

    evaluator = evaluator_for(model, device=device, dtype=dtype, optimize=optimize, stress=stress,
                              min_distance=min_distance, max_neighbors=max_neighbors)
    frames = list(frames)
    ready, failed = _prepare(evaluator, enumerate(frames))
    if failed:
        listed = [f"structure {f.index}: {f.reason}" for f in failed.values()]
        raise InputError(f"{len(failed)} of {len(frames)} structures cannot be evaluated (structures "
                         f"{', '.join(str(i) for i in list(failed)[:50])}{' ...' if len(failed) > 50 else ''}); "
                         + "; ".join(listed[:10]) + (f"; ... {len(listed) - 10} more" if len(listed) > 10 else ""))
    with tqdm(total=len(frames), unit="structure", disable=(None if progress is None else not progress),
              leave=False) as bar:
        results = _run(evaluator, ready, max_atoms, max_edges or evaluator.default_max_edges, bar)
    bad = [index for index, r in results.items() if isinstance(r, Failed)]
    if bad:
        raise _non_finite_error(sorted(bad))
    return [results[index] for index in range(len(frames))]
