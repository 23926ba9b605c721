"""``painnfx eval IN OUT``: energy, forces and stress of every structure in a file, batched.

IN is any file ASE reads (extxyz, xyz, traj, ...; every frame). OUT is extended XYZ with each
frame's energy, forces and (frames periodic in all three directions) stress, in ASE's
SinglePointCalculator conventions (eV, eV/A, eV/A^3 in Voigt order). Frames are read, checked
and evaluated a window at a time (painnfx.model.batch), so memory stays flat on files of any
length. A frame that cannot be evaluated (unknown element, NaN positions, overlapping atoms,
degenerate cell) is reported on stderr with its index and reason and left out of OUT; every
good frame is still written, in input order, and the exit status is 1 when any frame failed.

OUT must not be IN (nor a link to it). It is written to a temporary file in OUT's folder and
renamed to OUT only when every frame has been evaluated: an existing OUT is replaced then, never
before, and an interrupted or failed run leaves it as it was.

    painnfx eval structures.extxyz results.extxyz --dtype float32 --max-atoms 8192
"""

from __future__ import annotations

import os
import sys
import time

from .dtypes import DTYPES
from .usage import UsageError, check_device, output_file, positive_int, readable_file, replaced_when_complete


def add_arguments(p) -> None:
    from painnfx.model.batch import DEFAULT_MAX_ATOMS, DEFAULT_MAX_EDGES, DEFAULT_MAX_EDGES_PLAIN, DEFAULT_WINDOW

    p.add_argument("input", metavar="IN", help="structures: any file ASE reads, all frames")
    p.add_argument("output", metavar="OUT", help="extended XYZ file to write; an existing OUT is replaced only once "
                                                 "the new one is complete (never IN itself)")
    p.add_argument("--model", help="model checkpoint (default: the built-in default model)")
    p.add_argument("--device", default="cpu", help="torch device to run the model on (cpu, cuda, ...)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64", help="floating-point precision of the model")
    p.add_argument("--optimize", choices=["auto", "on", "off"], default="auto",
                   help="as for painnfx md: auto follows the path rule, set up while the job runs")
    p.add_argument("--max-atoms", type=positive_int, default=DEFAULT_MAX_ATOMS, help="atoms per batch at most")
    p.add_argument("--max-edges", type=positive_int,
                   help=f"edges per batch at most (default: {DEFAULT_MAX_EDGES} for the optimized model, "
                        f"{DEFAULT_MAX_EDGES_PLAIN} for the plain one)")
    p.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW,
                   help="frames read, checked and packed at a time (bounds memory)")
    p.add_argument("--no-stress", action="store_true", help="do not compute stress for periodic frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def read_frames(path: str):
    """After checking that ASE can read ``path``: a function returning a generator of its frames
    (read lazily). A frame ASE cannot parse ends the stream; the function's ``error`` then says
    where and why."""
    from ase.io import iread

    readable_file(path, "IN")
    if os.path.getsize(path) == 0:
        raise UsageError(f"IN {path}: the file is empty")
    frames = iread(path, index=":")
    try:
        first = next(frames)
    except StopIteration:
        raise UsageError(f"IN {path}: no structures in the file") from None
    except Exception as exc:  # ASE raises many types for files it cannot parse
        raise UsageError(f"IN {path}: ASE cannot read it ({type(exc).__name__}: {exc})") from None

    def stream():
        yield first
        index = 1
        while True:
            try:
                atoms = next(frames)
            except StopIteration:
                return
            except Exception as exc:  # a corrupt frame ends the file for ASE: say where, keep what was read
                stream.error = f"ASE stopped reading IN at frame {index} ({type(exc).__name__}: {exc})"
                return
            yield atoms
            index += 1

    stream.error = None
    return stream


def main_eval(args) -> int:
    from ase.io import write

    from painnfx.model.batch import BatchEvaluator, Failed, iter_evaluate

    check_device(args.device)
    out = output_file(args.output, "OUT")
    if os.path.exists(out) and os.path.exists(args.input) and os.path.samefile(out, args.input):
        raise UsageError(f"OUT {args.output} is IN {args.input} (the same file): writing it would destroy the "
                         "input; choose another OUT")
    read = read_frames(args.input)
    frames = read()
    optimize = {"auto": "auto", "on": True, "off": False}[args.optimize]
    start = time.perf_counter()
    evaluator = BatchEvaluator(args.model, device=args.device, dtype=DTYPES[args.dtype], optimize=optimize,
                               stress=not args.no_stress)
    setup = time.perf_counter() - start
    failed, written, atoms_done = [], 0, 0
    first = None  # seconds to the first result written
    start = time.perf_counter()
    with replaced_when_complete(out) as fh:
        for result in iter_evaluate(frames, evaluator=evaluator, max_atoms=args.max_atoms, max_edges=args.max_edges,
                                    window=args.window, progress=False if args.quiet else None):
            if isinstance(result, Failed):
                failed.append(result)
                print(f"painnfx eval: frame {result.index}: {result.reason}", file=sys.stderr)
                continue
            write(fh, result, format="extxyz")
            if first is None:
                first = time.perf_counter() - start
            written += 1
            atoms_done += len(result)
    seconds = time.perf_counter() - start
    paths = [p["path"] for p in getattr(getattr(evaluator.evaluator, "report", None), "paths", [])]
    print(f"{written} structures ({atoms_done} atoms) in {seconds:.2f} s: {written / seconds:.1f} structures/s, "
          f"{atoms_done / seconds:.0f} atoms/s; model set-up {setup:.2f} s before, first result after "
          f"{first if first is not None else 0.0:.2f} s" + (f"; paths: {' -> '.join(paths)}" if paths else "")
          + f"; wrote {out}")
    if read.error:
        print(f"painnfx eval: {read.error}; the frames after it were not evaluated", file=sys.stderr)
        return 1
    if failed:
        print(f"painnfx eval: {len(failed)} of {written + len(failed)} frames failed (not written): frames "
              + ", ".join(str(f.index) for f in failed[:20]) + (" ..." if len(failed) > 20 else ""), file=sys.stderr)
        return 1
    return 0
