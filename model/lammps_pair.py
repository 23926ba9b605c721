"""LAMMPS's C++ pair style ``painnfx``: the model file it reads and the plugin it is.

The pair style (``model/lammps/*.cpp``) runs a PaiNN layer by layer with per-layer ghost
exchange and no Python in the MD process (docs/lammps.md). This module writes what it needs:

* :func:`export_model` writes the model file: ``torch.save`` of plain data (metadata and weight
  tensors, read in C++ by ``torch::pickle_load``; in Python by ``read_model_file`` with
  ``weights_only=True``). It records the fused ops' schemas (declared in Python, so the pair
  style declares them itself from the file) and the path of painnfx's C++ library with their
  CPU kernels (built here for this machine if it is not yet).
* :func:`build_plugin` compiles the pair style into a LAMMPS plugin (``plugin load FILE``),
  against a LAMMPS source tree's headers (the one ``tools/lammps_build.sh`` keeps, or a user's
  own, ``PAINNFX_LAMMPS_SRC``) and the installed torch's libtorch; cached by a key of everything
  that decides the build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import torch
from ase.data import chemical_symbols

from painnfx.ops.build_cache import BuildCache, digest
from painnfx.ops.radial import basis_of_module, cutoff_of_module

from .engine_model import plain_model
from .files import replaced_when_complete
from .validation import InputError, check_dtype

FORMAT = "painnfx-pair"
FORMAT_VERSION = 1
SOURCES = Path(__file__).parent / "lammps"
#: the fused ops the pair style calls (their schemas go into the model file)
OPS = ("prepare_edges", "painn_message", "painn_message_backward", "painn_update", "painn_update_backward")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("painnfx")
    except PackageNotFoundError:
        return "unknown"


def _elements(net) -> list:
    """The atomic numbers a PaiNN knows, in the order of the model file's per-element rows."""
    return list(net.config.elements) if net.config.elements else list(range(1, net.config.max_z))


def model_file_payload(model=None, dtype: torch.dtype = torch.float64) -> dict:
    """What :func:`export_model` writes: metadata and the weights, split per layer the way the
    pair style runs them (``model``: a PaiNN, ``optimize()`` of one, a checkpoint path, or None
    for the default Cu model)."""
    from painnfx.ops.cpu import build as cpu_build

    check_dtype(dtype)
    net = plain_model(model)
    cfg = net.config
    f, n_layers = net.n_atom_basis, net.n_interactions
    elements = _elements(net)
    basis, basis_params = basis_of_module(net.radial_basis)
    cutoff_fn, cutoff_params = cutoff_of_module(net.cutoff_fn)

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().to("cpu", dtype).contiguous().clone()

    zs = torch.tensor(elements)
    weights = {
        "basis_params": t(basis_params),
        "embedding": t(net.embedding.weight[zs]),
        "atom_shift": t(net.atomref[zs] + net.energy_shift),
        "head.w1": t(net.energy_head[0].weight), "head.b1": t(net.energy_head[0].bias),
        "head.w2": t(net.energy_head[1].weight), "head.b2": t(net.energy_head[1].bias),
    }
    rows = 3 * f
    for l in range(n_layers):
        inter, mix = net.interactions[l], net.mixing[l]
        lo = 0 if net.share_filters else l * rows
        p = f"layer{l}."
        ctx, upd = inter.interatomic_context_net, mix.intraatomic_context_net
        weights.update({
            p + "ctx.w1": t(ctx[0].weight), p + "ctx.b1": t(ctx[0].bias),
            p + "ctx.w2": t(ctx[1].weight), p + "ctx.b2": t(ctx[1].bias),
            p + "filter.w": t(net.filter_net.weight[lo:lo + rows]), p + "filter.b": t(net.filter_net.bias[lo:lo + rows]),
            p + "mix.u": t(mix.mu_channel_mix.weight),
            p + "mix.w1": t(upd[0].weight), p + "mix.b1": t(upd[0].bias),
            p + "mix.w2": t(upd[1].weight), p + "mix.b2": t(upd[1].bias),
        })
    library, _ = cpu_build.build()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "painnfx_version": _version(),
        "torch_version": str(torch.__version__),
        "dtype": str(dtype).removeprefix("torch."),
        "cutoff": float(net.cutoff),
        "epsilon": float(cfg.epsilon),
        "n_layers": int(n_layers),
        "n_features": int(f),
        "elements": [int(z) for z in elements],
        "symbols": [chemical_symbols[z] for z in elements],
        "basis": basis,
        "cutoff_fn": cutoff_fn,
        "cutoff_params": [float(v) for v in cutoff_params],
        "energy_scale": float(net.energy_scale),
        "schemas": [str(getattr(torch.ops.painnfx, name).default._schema).removeprefix("painnfx::") for name in OPS],
        "cpu_library": str(Path(library).resolve()),
        "cpu_library_bytes": Path(library).stat().st_size,
        "weights": weights,
    }


def export_model(out: str | os.PathLike, model=None, dtype: torch.dtype = torch.float64) -> dict:
    """Write the model file ``pair_style painnfx OUT`` reads (the old file, if any, is replaced
    only once the new one is complete); returns its metadata (the payload without weights)."""
    payload = model_file_payload(model, dtype)
    with replaced_when_complete(out, "wb") as fh:
        torch.save(payload, fh)
    return {k: v for k, v in payload.items() if k != "weights"}


def export_with_plugin(out: str | os.PathLike, model=None, dtype: torch.dtype = torch.float64,
                       lmp: Optional[str] = None, types: Sequence[str] = ()) -> tuple[dict, Path]:
    """(metadata, plugin path): :func:`export_model` and :func:`build_plugin` side by side, the
    plugin's compile in a thread while the model file (and, on a new machine, the C++ kernel
    library) is built, so a first export waits for the longer of the two, not their sum (each
    build runs ``default_jobs`` compilers at a time, so a new machine briefly runs both sets). The
    atom types ``types`` are checked against the model before anything is built."""
    net = plain_model(model)
    check_types([chemical_symbols[z] for z in _elements(net)], types)
    with ThreadPoolExecutor(1, thread_name_prefix="painnfx-plugin") as pool:
        plugin = pool.submit(build_plugin, lmp)
        meta = export_model(out, net, dtype)
        return meta, plugin.result()[0]


def read_model_file(path: str | os.PathLike) -> dict:
    """The payload of a model file (``weights_only=True``); InputError if it is not one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: say which and why
        raise InputError(f"{path}: not a painnfx model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a painnfx model file for the pair style (write one with `painnfx export`)")
    return payload


def check_types(symbols: Sequence[str], types: Sequence[str]) -> None:
    """Every atom type maps to an element of the model (``symbols``) or NULL, as ``pair_coeff``
    will check."""
    for t, name in enumerate(types, 1):
        if name != "NULL" and name not in symbols:
            raise InputError(f"pair_coeff for painnfx: element {name} (atom type {t}) is not in the model; "
                             f"it knows: {' '.join(symbols)}")


def lammps_lines(model_file: str, plugin: str, types: Sequence[str]) -> list:
    """Input-script lines that load the pair style and the model for atom types ``types``
    (element names in type order). Put them after the box is created."""
    return [
        "newton on",
        f"plugin load {plugin}",
        f"pair_style painnfx {model_file}",
        f"pair_coeff * * {' '.join(types)}",
    ]


# ---------------------------------------------------------------------------------------------
# the plugin

CACHE = BuildCache("lammps-plugin")
PLUGIN_SOURCES = ("painnfx_model.cpp", "pair_painnfx.cpp", "painnfx_plugin.cpp")


class PluginBuildError(InputError):
    """The pair style could not be built (no LAMMPS headers, no MPI compiler, a compile error)."""


def lammps_headers(lmp: Optional[str] = None) -> Path:
    """The LAMMPS source headers the plugin compiles against: ``$PAINNFX_LAMMPS_SRC`` (a LAMMPS
    ``src`` folder), else the copy ``tools/lammps_build.sh`` keeps beside ``lmp``."""
    env = os.environ.get("PAINNFX_LAMMPS_SRC")
    candidates = [Path(env)] if env else []
    if lmp:
        candidates.append(Path(lmp).resolve().parent.parent / "include" / "lammps-src")
    for c in candidates:
        if (c / "pair.h").is_file() and (c / "lammpsplugin.h").is_file():
            return c
    raise PluginBuildError(
        "no LAMMPS headers for the painnfx pair style: set PAINNFX_LAMMPS_SRC to your LAMMPS's src folder, "
        f"or build LAMMPS with tools/lammps_build.sh (looked in {[str(c) for c in candidates]})")


def mpi_compiler() -> str:
    """The MPI C++ compiler wrapper (``$PAINNFX_MPICXX``, else mpicxx.mpich, else mpicxx): the
    plugin must see the MPI headers LAMMPS was built with."""
    for c in (os.environ.get("PAINNFX_MPICXX"), "mpicxx.mpich", "mpicxx"):
        if c and shutil.which(c):
            return c
    raise PluginBuildError("no MPI C++ compiler (mpicxx) found; set PAINNFX_MPICXX")


def build_plugin(lmp: Optional[str] = None, use_cache: bool = True) -> tuple[Path, dict]:
    """(plugin path, build info): the pair style compiled for the LAMMPS whose headers
    :func:`lammps_headers` finds and for the installed torch (~1 minute; then cached)."""
    from painnfx.ops.cpu.build import compiler_version, default_jobs, torch_includes, torch_links

    headers = lammps_headers(lmp)
    cxx = mpi_compiler()
    libs = list(torch_links())
    flags = ["-O3", "-std=c++20", "-fPIC", "-w", f"-I{headers}", f"-I{SOURCES}", *torch_includes()]
    version = compiler_version(cxx)
    key = digest([*((SOURCES / s).read_text() for s in (*PLUGIN_SOURCES, "painnfx_model.h", "pair_painnfx.h")),
                  (headers / "version.h").read_text(), (headers / "pair.h").read_text(), " ".join(flags + libs),
                  version, torch.__version__])
    name = f"painnfx_lammps_{key[:24]}.so"
    if use_cache and (recorded := CACHE.lookup(name)) is not None:
        return CACHE.path(name), dict(recorded, cached=True)

    def run(cmd: list) -> None:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if res.returncode != 0:
            raise PluginBuildError(f"building the painnfx pair style failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}")

    def compile_to(out: Path) -> dict:
        """One object per source, compiled side by side (each parses torch's headers) as many at a
        time as the C++ library's build runs (``default_jobs``: the threads the user gave torch),
        then linked."""
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            objects = [str(Path(tmp) / (Path(s).stem + ".o")) for s in PLUGIN_SOURCES]
            units = [[cxx, *flags, "-c", str(SOURCES / s), "-o", o] for s, o in zip(PLUGIN_SOURCES, objects)]
            with ThreadPoolExecutor(min(len(units), default_jobs())) as pool:
                list(pool.map(run, units))
            run([cxx, *flags, "-shared", *objects, "-o", str(out), *libs])
        return {"compiler": cxx, "headers": str(headers), "build_seconds": round(time.perf_counter() - start, 2)}

    info = CACHE.store(name, compile_to)
    return CACHE.path(name), dict(info, cached=False)
