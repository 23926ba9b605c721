"""A painnfx model as a LAMMPS potential: ``pair_style mliap unified`` (ML-IAP with Python).

LAMMPS hands the model, on every MPI rank, its owned ("local") atoms, the ghost atoms around
its subdomain, and a full neighbor list as pairs ``(i, j)`` with ``r_ij = x_j - x_i``; it wants
back ``f_ij = dE/dr_ij`` per pair (it adds ``f_ij`` to atom i and subtracts it from j, sends
ghost forces back to their owners and tallies the virial from ``r_ij`` and ``f_ij``), the
energy and the per-atom energies.

A PaiNN with L message layers is exact on a subdomain only if every atom within L-1 hops of an
owned atom sees all its neighbors. So the adapter asks LAMMPS for neighbor lists of ghost atoms
too (``pair_style mliap unified FILE 1``) and for a ghost shell of L * r_c + skin
(``comm_modify cutoff``), runs the model over the owned atoms and the ghosts they depend on
(``needed_graph``: periodic images are folded onto one copy, so one rank computes exactly the
ASE graph), and sums the energy over owned atoms only; ``dE_owned/dr_ij`` for every pair, ghost
pairs included, is then the exact force contribution. The model sees positions 0 and
``shifts = r_ij``: painnfx models read geometry only through ``r_ij = R[j] - R[i] + shift``, so
the gradient to the shifts is f_ij.

:class:`PaiNNMLIAP` is picklable (that file is what ``pair_style mliap unified`` loads): the
pickle holds plain data only (``engine_model.EngineModel``): the model is rebuilt from embedded
checkpoint bytes (``weights_only=True``), and optimized, on each rank at its first evaluation. ``lammps_lines`` are the input-script lines that go with it, and
``check_lammps`` (run from those lines through LAMMPS's ``python`` command, or by ``attach``)
checks the LAMMPS settings the adapter cannot see from its data (``units metal``, ``newton on``),
records the ghost shell the lines ask for, which the model file checks against its own needs, and
sets it (with ghost neighbor lists) only when there are several ranks: on one rank every ghost is
a periodic image of an owned atom and folds onto it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from painnfx.ops.dispatch import record_calls

from .engine_model import EngineModel
from .validation import InputError, check_numbers

#: Element names LAMMPS may map types to. All of them are declared, so that a type mapped to an
#: element the model lacks reaches the adapter, which names it (LAMMPS itself would only say
#: "Incorrect args for pair coefficients").
ELEMENT_TYPES = list(chemical_symbols[1:])

#: LAMMPS's default neighbor skin in ``units metal``.
DEFAULT_SKIN = 2.0

_CHECKED: dict = {}  # what check_lammps found, per process (one LAMMPS instance per rank)


def write_line_atomically(line: str) -> None:
    """Write ``line`` to stderr (never inside LAMMPS's thermo rows on stdout) in ONE write call.

    Every MPI rank shares the launcher's stderr, and LAMMPS's embedded Python leaves it
    unbuffered, so ``print`` wrote the text and its newline as two writes and another rank's
    line could land between them (seen on CI: two ranks' summaries on one line). One write of
    fewer than PIPE_BUF bytes to a pipe is atomic.
    """
    data = (line + "\n").encode()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (captured)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return
    sys.stderr.flush()
    while data:
        data = data[os.write(fd, data):]


class PaiNNMLIAP(EngineModel):
    """ML-IAP "unified" model (the ``lammps.mliap.mliap_unified_abc.MLIAPUnified`` contract,
    duck-typed so that painnfx imports without LAMMPS) for a painnfx PaiNN.

    ``model``: a :class:`PaiNN`, ``optimize()`` of one, a checkpoint path, or None for the
    default Cu model. ``optimize``: as :class:`~painnfx.model.calculator.PaiNNCalculator`
    ("auto", True, False). ``skin``: the LAMMPS neighbor skin the ghost shell allows for.
    """

    ndescriptors = 1  # ML-IAP bookkeeping sizes; a unified model uses neither
    nparams = 1

    def __init__(self, model=None, *, dtype: torch.dtype = torch.float64, device: str = "cpu",
                 optimize="auto", skin: float = DEFAULT_SKIN):
        super().__init__(model, dtype=dtype, device=device, optimize=optimize, skin=float(skin))

    def _configure(self) -> None:
        self.skin = self._state["skin"]
        self.element_types = ELEMENT_TYPES
        self.rcutfac = 0.5 * self.cutoff  # ML-IAP's pair cutoff is 2 * rcutfac
        self.interface = None  # set by LAMMPS when it loads the model
        self._summarised = False  # the first evaluation on each rank prints what ran (run_summary)

    def ghost_shell(self, skin: float) -> float:
        """The ghost shell every rank needs: L hops of r_c, plus the skin atoms may move
        between neighbor-list builds."""
        return self.n_layers * self.cutoff + skin

    @property
    def comm_cutoff(self) -> float:
        return self.ghost_shell(self.skin)

    def save(self, path) -> None:
        """Write the file ``pair_style mliap unified PATH`` loads."""
        with open(path, "wb") as f:
            pickle.dump(self, f)

    def lammps_lines(self, types: Sequence[str], path: str = "EXISTS") -> list:
        """Input-script lines that load this model for atom types ``types`` (element names, in
        type order; "NULL" leaves a type out). ``path``: the saved model file, or "EXISTS" when
        ``attach`` loaded the object. Put them after the box is created."""
        self.check_types(types)
        cc = f"{self.comm_cutoff:.6g}"
        return [
            "newton on",
            f"neighbor {self.skin:g} bin",
            f"python painnfx_check_lammps input 3 SELF {cc} {self.skin:g} format pff here "
            '"from painnfx.model.lammps_mliap import check_lammps as painnfx_check_lammps"',
            "python painnfx_check_lammps invoke",
            "comm_modify cutoff ${painnfx_comm_cutoff}",
            f"pair_style mliap unified {path} ${{painnfx_ghost_lists}}",
            f"pair_coeff * * {' '.join(types)}",
        ]

    def check_settings(self) -> None:
        """The LAMMPS settings ``check_lammps`` recorded must fit this model: a ghost shell of at
        least L * r_c + skin (an older lines file with another model's file is caught here)."""
        if "lmp" not in _CHECKED:
            raise InputError(
                "painnfx: the LAMMPS settings were not checked; load the model with the lines "
                "`painnfx lammps export` writes (or painnfx.model.lammps_mliap.attach from Python)")
        need = self.ghost_shell(_CHECKED["skin"])
        if _CHECKED["comm_cutoff"] < need - 1e-9:
            raise InputError(
                f"painnfx: communication cutoff {_CHECKED['comm_cutoff']:g} A is too short for this model "
                f"({self.n_layers} layers x cutoff {self.cutoff:g} A + skin {_CHECKED['skin']:g} A = {need:g} A): "
                "use the lines `painnfx lammps export` wrote for this model file")

    def check_types(self, types: Iterable[str]) -> None:
        names = [t for t in types if t != "NULL"]
        unknown = [t for t in names if t not in chemical_symbols[1:]]
        if unknown:
            raise InputError(f"{unknown} are not element names")
        self._check_numbers(np.array([chemical_symbols.index(t) for t in names], dtype=np.int64))

    def _check_numbers(self, z: np.ndarray) -> None:
        try:
            check_numbers(z, self.elements, self.max_z)
        except InputError as exc:
            raise InputError(f"painnfx: atom types mapped in pair_coeff: {exc}") from None

    # -- the ML-IAP unified interface --
    def compute_descriptors(self, data) -> None:
        pass

    def compute_gradients(self, data) -> None:
        pass

    def compute_forces(self, data) -> None:
        """Energy of the owned atoms and f_ij = dE/dr_ij for every pair LAMMPS listed."""
        self.check_settings()
        ntotal, npairs = int(data.ntotal), int(data.npairs)
        tags = _CHECKED["lmp"].numpy.extract_atom("id", nelem=ntotal)
        self.evaluator  # noqa: B018  set up (optimized, verified) before the first evaluation is recorded
        with record_calls() if not self._summarised else contextlib.nullcontext() as calls:
            eatoms, fij = self.evaluate(np.asarray(data.elems)[:ntotal], np.asarray(data.pair_i)[:npairs],
                                        np.asarray(data.pair_j)[:npairs], np.asarray(data.rij)[:npairs],
                                        int(data.nlocal), tags)
        if not self._summarised:
            owned, ghosts, edges = self._counts
            write_line_atomically(f"{self.run_summary(calls)}; computed per layer: {owned} owned + {ghosts} ghost "
                                  f"atoms, {edges} edges")
            self._summarised = True
        data.update_pair_forces(fij)
        data.energy = float(eatoms.sum())
        nlist = int(data.nlistatoms)
        if nlist:
            data.eatoms = np.ascontiguousarray(eatoms[np.asarray(data.iatoms)[:nlist]])

    def evaluate(self, elems: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray, rij: np.ndarray, nlocal: int,
                 tags: Optional[np.ndarray]) -> tuple:
        """One rank's share: per-owned-atom energies (nlocal,) and f_ij = dE_owned/dr_ij (npairs, 3).

        ``elems``: element index (into ``element_types``; -1 unmapped) of the owned atoms then the
        ghosts; pairs (i, j) index them, r_ij = x_j - x_i; ``tags``: LAMMPS atom IDs (None: do not fold images)."""
        ntotal = len(elems)
        if tags is not None and not np.asarray(tags[:ntotal]).any():
            tags = None  # `atom_modify id no`: no folding (still exact, with the whole ghost shell)
        pair_i, pair_j = pair_i.astype(np.int64), pair_j.astype(np.int64)
        graph = needed_graph(pair_i, pair_j, nlocal, ntotal, self.n_layers, tags)
        mapped = elems[graph.atoms] >= 0
        z = elems[graph.atoms].astype(np.int64) + 1
        self._check_numbers(z[mapped])
        z[~mapped] = self.elements[0] if self.elements else 1  # unmapped ("NULL") atoms have no pairs
        n = len(graph.atoms)
        self._counts = (nlocal, n - nlocal, len(graph.pairs))  # atoms and edges the model runs on
        owner = np.where((graph.atoms < nlocal) & mapped, np.arange(n), nlocal)  # ghosts' energies: dropped

        dev, dt = self.device, self.dtype
        tensors = (torch.zeros(n, 3, dtype=dt, device=dev), torch.as_tensor(z, device=dev),
                   torch.as_tensor(graph.edge_index, device=dev), torch.as_tensor(rij[graph.pairs], device=dev).to(dt),
                   torch.as_tensor(owner, device=dev), torch.empty(nlocal + 1, 0, device=dev))
        joint = getattr(self.evaluator, "joint_properties", None)
        out = None
        if joint is not None and n:
            out = joint("lammps pair forces", pair_forces, tensors, example=_pair_example(*tensors))
        e, grad = out if out is not None else pair_forces(self.evaluator)(*tensors)
        fij = np.zeros((len(pair_i), 3))
        fij[graph.pairs] = grad.detach().to("cpu", torch.float64).numpy()
        return e.detach().to("cpu", torch.float64).numpy(), fij


def pair_forces(energy):
    """The function an engine step needs of ``energy`` (a model with the batched PaiNN signature):
    (positions, numbers, edge_index, r_ij as shifts, owner per atom, a (nlocal + 1, 0) tensor whose
    length is the number of energy bins, the last one collecting the ghosts') -> (owned atoms'
    energies (nlocal,), dE_owned/dr_ij (E, 3)). Run as is (autograd) or traced into a joint graph."""
    def fn(positions, numbers, edge_index, shifts, owner, bins):
        shifts = shifts.detach().requires_grad_(True)
        with torch.enable_grad():
            e = energy(positions, numbers, edge_index, shifts, owner, bins.shape[0])[:-1]
            (grad,) = torch.autograd.grad(e.sum(), shifts, allow_unused=True)
        return e.detach(), torch.zeros_like(shifts) if grad is None else grad

    return fn


def _pair_example(positions, numbers, edge_index, shifts, owner, bins) -> tuple:
    """A 7-atom, 19-pair, 3-owned-atom rank like the given one to trace on (sizes that coincide
    with no feature or spatial size; joint.trace_example)."""
    from painnfx.rewriter.joint import trace_example

    pos, z, ei, sh = trace_example(positions, numbers, edge_index, shifts)
    sh = sh + torch.arange(1, sh.shape[0] + 1, dtype=sh.dtype, device=sh.device)[:, None] * 0.1  # no zero-length pair
    owned = 3
    own = torch.where(torch.arange(pos.shape[0], device=owner.device) < owned,
                      torch.arange(pos.shape[0], device=owner.device), owned).to(owner.dtype)
    return pos, z, ei, sh, own, bins.new_empty(owned + 1, 0)


class NeededGraph(NamedTuple):
    atoms: np.ndarray        # LAMMPS indices of the atoms the model runs on; the owned ones first
    pairs: np.ndarray        # indices of the LAMMPS pairs that are edges
    edge_index: np.ndarray   # (2, len(pairs)) into ``atoms``


def needed_graph(pair_i: np.ndarray, pair_j: np.ndarray, nlocal: int, ntotal: int, n_layers: int,
                 tags: Optional[np.ndarray] = None) -> NeededGraph:
    """The part of LAMMPS's owned + ghost graph that the owned atoms' energy depends on.

    hop(a) = fewest pairs from an owned atom to ``a``. After L layers the owned energies depend
    on pairs whose centre has hop <= L-1, and such a centre sees all its neighbors when the ghost
    shell is at least L * r_c + skin. Copies of one atom (the owned atom and its periodic images,
    or several images of another rank's atom: same tag) have the same features (translation
    invariance), so every copy is folded onto the one of least hop: pairs centred on the other
    copies are dropped and pairs pointing at them point at it (r_ij unchanged). On one rank every
    ghost folds onto an owned atom and the graph is the owned atoms' periodic graph, as in ASE;
    on several ranks each other-rank atom is computed once, not once per image. Dropped pairs
    get f_ij = 0 exactly.
    """
    idx = np.arange(ntotal)
    hop = np.full(ntotal, n_layers, dtype=np.int64)
    hop[:nlocal] = 0
    for k in range(1, n_layers):
        reached = pair_j[hop[pair_i] == k - 1]
        hop[reached] = np.minimum(hop[reached], k)
    canon = idx
    if tags is not None and ntotal:
        tags = np.asarray(tags[:ntotal], dtype=np.int64)
        order = np.lexsort((idx, hop, tags))  # per tag: least hop first, then lowest index
        first = np.ones(ntotal, dtype=bool)
        first[1:] = tags[order][1:] != tags[order][:-1]
        group = np.cumsum(first) - 1
        canon = np.empty(ntotal, dtype=np.int64)
        canon[order] = order[first][group]
    keep = (canon[pair_i] == pair_i) & (hop[pair_i] <= n_layers - 1)
    ci, cj = pair_i, canon[pair_j]
    if n_layers > 1:
        centres_needed = ((canon == idx) & (idx >= nlocal) & (hop <= n_layers - 1)).any()
        if centres_needed and not (ci[keep] >= nlocal).any():
            # a ghost next to an owned atom has that atom as its neighbor: if no pair starts at
            # a ghost, LAMMPS built no ghost neighbor lists
            raise InputError(
                f"painnfx: this model has {n_layers} message layers and needs neighbor lists of ghost atoms: "
                "use `pair_style mliap unified FILE 1` (the final 1), as `painnfx lammps export` writes")
    pairs = np.flatnonzero(keep)
    used = np.zeros(ntotal, dtype=bool)
    used[:nlocal] = True
    used[ci[pairs]] = True
    used[cj[pairs]] = True
    atoms = np.flatnonzero(used)
    index = np.full(ntotal, -1, dtype=np.int64)
    index[atoms] = np.arange(len(atoms))
    return NeededGraph(atoms, pairs, np.stack([index[ci[pairs]], index[cj[pairs]]]))


def check_lammps(ptr, comm_cutoff: float, skin: float) -> None:
    """Called from the input script (LAMMPS's ``python`` command, ``SELF``) or by ``attach``, with
    the communication cutoff and skin the lines set: refuse settings under which the model would
    give wrong numbers without noticing, and record them for ``PaiNNMLIAP.check_settings``."""
    from lammps import lammps

    lmp = ptr if hasattr(ptr, "extract_global") else lammps(ptr=ptr)
    units = lmp.extract_global("units")
    if units != "metal":
        raise InputError(f"painnfx: models use eV and Angstrom: set `units metal` (this input has units {units})")
    if not lmp.extract_setting("newton_pair"):
        raise InputError("painnfx: ML-IAP needs `newton on` (newton_pair is off)")
    _CHECKED.update(lmp=lmp, comm_cutoff=float(comm_cutoff), skin=float(skin))
    # one rank: every ghost is an image of an owned atom and folds onto it (needed_graph), so
    # neither ghost neighbor lists nor a wide ghost shell are needed
    several = lmp.extract_setting("world_size") > 1
    lmp.command(f"variable painnfx_ghost_lists string {1 if several else 0}")
    lmp.command(f"variable painnfx_comm_cutoff string {float(comm_cutoff) if several else 0.0:.6g}")


def attach(lmp, model=None, types: Sequence[str] = ("Cu",), **kwargs) -> PaiNNMLIAP:
    """Load a painnfx model into a LAMMPS instance driven from Python (``lammps.lammps()``), after
    its box is created; ``kwargs`` go to :class:`PaiNNMLIAP`. Returns the adapter."""
    from lammps.mliap import activate_mliappy, load_unified

    adapter = model if isinstance(model, PaiNNMLIAP) else PaiNNMLIAP(model, **kwargs)
    activate_mliappy(lmp)
    load_unified(adapter)
    for line in adapter.lammps_lines(types):
        if line.startswith("python painnfx_check_lammps invoke"):
            check_lammps(lmp, adapter.comm_cutoff, adapter.skin)
        elif not line.startswith("python "):
            lmp.command(line)
    return adapter


def load(path) -> PaiNNMLIAP:
    """Read a model file written by :meth:`PaiNNMLIAP.save` (it is a pickle: load only your own)."""
    with open(path, "rb") as f:
        obj = pickle.load(f)
    if not isinstance(obj, PaiNNMLIAP):
        raise TypeError(f"{path} is not a painnfx LAMMPS model file")
    return obj
