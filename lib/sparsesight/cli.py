"""The ``sparsesight`` command line: one subcommand per task.

To add a subcommand (``demo``, ``bench``, ...): write ``_add_<name>(sub)`` that creates its parser with
``sub.add_parser(...)``, adds the options and sets ``func=<handler>``; a handler takes the parsed
``argparse.Namespace`` and returns an exit code. Then list ``_add_<name>`` in ``SUBCOMMANDS``.
Heavy imports go inside the handlers so ``sparsesight --help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import cli_pacs as _pacs
from .memory import keep_freed_memory

DEFAULT_SAMPLE_OUT = Path("sample_data") / "generated" / "Task01_SparseSightPhantom"


# ---------------------------------------------------------------------------------------------- sample-data
def add_sample_data_arguments(p: argparse.ArgumentParser, default_out=DEFAULT_SAMPLE_OUT) -> argparse.ArgumentParser:
    """Options of ``sample-data`` (shared with sample_data/make_sample_data.py)."""
    p.add_argument("--out", type=Path, default=Path(default_out),
                   help="output folder (MSD Task01 layout); default: %(default)s")
    p.add_argument("--cases", type=int, default=12, help="number of cases in all, test ones included (default 12)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; case i uses a seed derived from (seed, i)")
    p.add_argument("--downsample", type=int, default=1,
                   help="voxel size in mm: 1 gives the BraTS grid 240x240x155, k gives ceil(240/k)x... (default 1)")
    p.add_argument("--n-test", type=int, default=2, help="the last N cases go to imagesTs/labelsTs (default 2)")
    p.add_argument("--variety", action="store_true",
                   help="off-grid cases: other head sizes and shapes (non-linear deformation), 1-3 lesions (small "
                        "ones too), wider contrast and bias field, each on a random grid (0.8-1.5 mm, slices up to "
                        "3 mm, any axis orientation, cropped field of view); made at --downsample mm first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dwi", action="store_true",
                   help="also write the DWI phantom (two crossing white-matter fibre populations on the MNI152 "
                        "anatomy, HCP MGH protocol, FSL bval/bvec sidecars, WM mask, ground truth) to <out>/dwi")
    p.add_argument("--dwi-subsample", type=int, default=1,
                   help="keep every k-th volume of each shell of the DWI protocol (1: all 552; 4: 138)")
    p.add_argument("--dicom", action="store_true",
                   help="also write every case as a DICOM study (four MR series FLAIR, T1, T1ce, T2) under <out>/dicom")
    p.add_argument("--stow", metavar="URL", default=None,
                   help="store every case as a DICOM study in this PACS with STOW-RS (its DICOMweb root, e.g. "
                        "http://127.0.0.1:8042/dicom-web); user/password from SPARSESIGHT_PACS_USER / "
                        "SPARSESIGHT_PACS_PASSWORD when set")
    return p


def _write_dicom(args: argparse.Namespace) -> int:
    """--dicom / --stow: the written phantoms as DICOM studies (files and/or STOW-RS)."""
    import os

    from .data.dicom import web
    from .data.dicom.sample import write_dicom_dataset

    client = None
    if args.stow:
        client = web.connect(args.stow, os.environ.get("SPARSESIGHT_PACS_USER"),
                             os.environ.get("SPARSESIGHT_PACS_PASSWORD"))
    out = Path(args.out) / "dicom" if args.dicom else None
    try:
        uids = write_dicom_dataset(args.out, out_dir=out, client=client, seed=args.seed)
    except web.PacsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if out is not None:
        print(f"DICOM: {len(uids)} studies under {out.resolve()}")
    if client is not None:
        print(f"stored {len(uids)} studies (4 MR series each) in {args.stow}")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    """Write the BraTS-like phantom dataset and say where it is."""
    from .data.phantom import write_dataset

    if args.cases < 1 or args.n_test < 0 or args.n_test > args.cases:
        print("error: need --cases >= 1 and 0 <= --n-test <= --cases", file=sys.stderr)
        return 2
    if args.downsample < 1:
        print("error: --downsample must be >= 1", file=sys.stderr)
        return 2
    if getattr(args, "dwi_subsample", 1) < 1:
        print("error: --dwi-subsample must be >= 1", file=sys.stderr)
        return 2
    path = write_dataset(args.out, n_cases=args.cases, seed=args.seed, downsample=args.downsample,
                         n_test=args.n_test, progress=not args.quiet, variety=getattr(args, "variety", False))
    root = path.parent.resolve()
    grid = "random grids" if getattr(args, "variety", False) else f"{args.downsample} mm"
    print(f"wrote {args.cases - args.n_test} training + {args.n_test} test cases ({grid}) to {root}")
    print(f"dataset.json: {path.resolve()}")
    if getattr(args, "dwi", False):
        from .data.diffusion import hcp_mgh_protocol, write_dwi_phantom
        from .runners.microstructure import DEFAULT_EXTRA_AXONAL

        # the extra-axonal law the train task trains with by default, so that the served model and the data agree
        paths = write_dwi_phantom(Path(args.out) / "dwi", hcp_mgh_protocol(args.dwi_subsample), seed=args.seed,
                                  extra_axonal=DEFAULT_EXTRA_AXONAL)
        print(f"DWI phantom: {paths['dwi'].resolve()} (+ .bval, .bvec, .json timing, _mask, _truth_*; "
              f"extra-axonal law {DEFAULT_EXTRA_AXONAL})")
    if getattr(args, "dicom", False) or getattr(args, "stow", None):
        return _write_dicom(args)
    return 0


def _add_sample_data(sub) -> None:
    p = sub.add_parser("sample-data", help="make the BraTS-like 4-modality phantom dataset (MSD Task01 layout)",
                       description="Make BraTS-like brain tumour phantoms (FLAIR, T1, T1ce, T2 + labels) on the "
                                   "MNI152 anatomy shipped with nilearn; nothing is downloaded.")
    add_sample_data_arguments(p)
    p.set_defaults(func=cmd_sample_data)


# ----------------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Shipped weights on held-out phantoms through the real server (Dice beside the model cards, bundles, PNG);
    --retrain: sample data -> train ML-CSC and SUM from scratch over REST -> infer -> bundle + PNG."""
    from .demo import run, run_shipped

    try:
        if args.retrain:
            run(out=args.out, port=args.port, cases=args.cases, downsample=args.downsample, epochs=args.epochs,
                seed=args.seed, retrain=True)
        else:
            run_shipped(out=args.out, port=args.port, record=args.record)
    except RuntimeError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end demo through the real MONAI Label server")
    p.add_argument("--out", default="out/demo", help="working folder (data, datastore, model, results)")
    p.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    p.add_argument("--cases", type=int, default=12, help="phantom cases (2 held out)")
    p.add_argument("--downsample", type=int, default=1, help="phantom voxel size in mm (1: the BraTS grid)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs when no checkpoint exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", type=Path, default=None, help="write the measured Dice and time as JSON "
                                                              "(bench/results/demo.json is what the README quotes)")
    p.add_argument("--retrain", action="store_true", help="train ML-CSC and SUM from scratch over REST instead of "
                                                           "serving the shipped weights (--cases/--epochs apply)")
    p.set_defaults(func=cmd_demo)


# ------------------------------------------------------------------------------------------- microstructure
def _add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dwi", type=Path, help="4D DWI NIfTI; its sidecars <stem>.bval/.bvec (or <stem>.b) and "
                                          "<stem>.json (timing) are read when present")
    p.add_argument("--bvals", type=Path, help="FSL bval file (default: <stem>.bval)")
    p.add_argument("--bvecs", type=Path, help="FSL bvec file (default: <stem>.bvec)")
    p.add_argument("--grad", type=Path, help="MRtrix b-table (rows gx gy gz b; default: <stem>.b)")
    p.add_argument("--big-delta", type=float, nargs="+", help="Δ, gradient separation: s or ms (detected); one "
                                                             "number, or one per --shells")
    p.add_argument("--small-delta", type=float, nargs="+", help="δ, gradient duration, as --big-delta")
    p.add_argument("--shells", type=float, nargs="+", help="the shells' b-values the per-shell timings refer to")
    p.add_argument("--b-unit", choices=["s/mm2", "s/m2", "ms/um2"], help="unit of the b-values (default: detected)")
    p.add_argument("--timing-unit", choices=["s", "ms"], help="unit of Δ, δ (default: detected)")


def _read_cli_protocol(args: argparse.Namespace):
    import nibabel as nib

    from .data import diffusion as dif
    from .data.diffusion import protocol_files as pf

    n = nib.load(str(args.dwi)).shape
    bvals = bvecs = grad = None
    if args.bvals or args.bvecs:
        if not (args.bvals and args.bvecs):
            raise ValueError("give both --bvals and --bvecs")
        bvals, bvecs = pf.read_fsl(args.bvals, args.bvecs)
    elif args.grad:
        b, v = pf.read_mrtrix(args.grad)
        grad = [[*row, bb] for row, bb in zip(v.tolist(), b.tolist())]

    def one(v):
        return None if v is None else (v[0] if len(v) == 1 else v)

    opts = {"bvals": bvals, "bvecs": bvecs, "grad": grad, "big_delta": one(args.big_delta),
            "small_delta": one(args.small_delta), "shells": args.shells, "b_unit": args.b_unit,
            "timing_unit": args.timing_unit}
    return dif.read_protocol(args.dwi, n_volumes=n[3] if len(n) == 4 else None, **opts), opts


def cmd_dwi_protocol(args: argparse.Namespace) -> int:
    """Read and check a DWI's protocol; print its shells, timing, hash, units and radius sensitivity; with
    --write-sidecar store the timing (and the FSL table) next to the image."""
    import json

    from .data.diffusion import protocol_files as pf
    from .data.diffusion import radius_sensitivity
    from .errors import InvalidInput

    try:
        protocol, _ = _read_cli_protocol(args)
    except (InvalidInput, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = {"volumes": protocol.m, "hash": protocol.hash, "source": protocol.source,
           "shells": protocol.shell_table(), "radius": radius_sensitivity(protocol)}
    if args.write_sidecar:
        out["written"] = [str(p) for p in pf.write_protocol(protocol, pf.stem(args.dwi)).values()]
    print(json.dumps(out, indent=1))
    return 0


def cmd_microstructure(args: argparse.Namespace) -> int:
    """Microstructure maps of a DWI file as a result bundle, without a server (the infer task's runner)."""
    from . import checkpoint, models
    from .data import diffusion as dif
    from .errors import InvalidInput
    from .runners import microstructure as run

    try:
        protocol, opts = _read_cli_protocol(args)
        if args.checkpoint:
            model, meta = checkpoint.load(args.checkpoint, expect="microstructure")
            version = meta["version"]
        else:
            if args.method != "fingerprinting":
                raise InvalidInput("--method mlp/hybrid need a trained --checkpoint; fingerprinting needs none")
            grid = dif.paper_grid() if not args.grid else dif.small_grid(*args.grid)
            model = models.build("microstructure", {"protocol": protocol.to_config(), "grid": grid.to_config()})
            version = "untrained"
        scheduler = "threads"
        if args.dask_address:  # a Dask cluster's scheduler: the chunks run on its workers
            from distributed import Client

            client = Client(args.dask_address)
            args.engine, scheduler = "dask", "distributed"
        try:
            path = run.run_bundle(model, "microstructure", version, args.dwi, pf_stem(args.dwi), args.out,
                                  method=args.method, workers=args.workers, engine=args.engine,
                                  dask_scheduler=scheduler, orientations=args.orientations, **opts)
        finally:
            if args.dask_address:
                client.close()
    except (InvalidInput, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bundle: {path}")
    return 0


def pf_stem(path) -> str:
    from .data.diffusion.protocol_files import stem

    return stem(path).name


def _add_microstructure(sub) -> None:
    p = sub.add_parser("dwi-protocol", help="read and check a DWI's protocol (gradient table + timing, units)",
                       description="Read a DWI's protocol from FSL/MRtrix files and a JSON sidecar or the options; "
                                   "refuse missing timing and ambiguous units; print shells, timing, hash and the "
                                   "radius resolution limit.")
    _add_protocol_arguments(p)
    p.add_argument("--write-sidecar", action="store_true",
                   help="write <stem>.bval, <stem>.bvec and <stem>.json (timing in s) next to the DWI")
    p.set_defaults(func=cmd_dwi_protocol)
    p = sub.add_parser("microstructure", help="microstructure maps of a DWI file as a result bundle (no server)")
    _add_protocol_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="the bundle .zip to write")
    p.add_argument("--method", default="fingerprinting", choices=["fingerprinting", "mlp", "hybrid"])
    p.add_argument("--checkpoint", type=Path, help="a trained microstructure checkpoint (needed by mlp/hybrid)")
    p.add_argument("--workers", type=int, default=1, help="processes over voxel chunks (one thread each)")
    p.add_argument("--engine", default="local", choices=["local", "dask"],
                   help="dask: the voxel chunks as Dask tasks (its threaded scheduler, --workers threads)")
    p.add_argument("--dask-address", metavar="TCP_ADDRESS",
                   help="run the voxel chunks on this Dask cluster (tcp://scheduler:8786; implies --engine dask; "
                        "--workers: chunks in flight / 2, e.g. the cluster's thread count)")
    p.add_argument("--orientations", default="csd", choices=["csd", "msmt"],
                   help="msmt: multi-shell multi-tissue CSD (needs cvxpy; falls back to csd on one shell)")
    p.add_argument("--grid", type=int, nargs=2, metavar=("N_R", "N_F"),
                   help="without a checkpoint: a smaller (r, f) grid for fingerprinting (default: the paper's 34 x 23)")
    p.set_defaults(func=cmd_microstructure)


# ----------------------------------------------------------------------------------------------------- view
def cmd_view(args: argparse.Namespace) -> int:
    """Start the review page (a shell in apps/viewer, run as its own process: the library never imports it)."""
    import subprocess

    viewer_dir = Path(__file__).resolve().parents[2] / "apps" / "viewer"
    if not (viewer_dir / "sparsesight_viewer").is_dir():
        logging.getLogger(__name__).error("the viewer is not at %s (run from a source checkout)", viewer_dir)
        return 2
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(viewer_dir), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "sparsesight_viewer", "--url", args.url, "--host", args.host, "--port",
           str(args.port), "--model", args.model] + (["--token", args.token] if args.token is not None else [])
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def _add_view(sub) -> None:
    p = sub.add_parser("view", help="review results in a browser (trame-slicer page over a running server)",
                       description="Serve the review page: 3 slice views + 3D over a running SparseSight MONAI "
                                   "Label server's images and result bundles, with the segment editor, submit, "
                                   "next sample and training. Headless: VTK_DEFAULT_OPENGL_WINDOW="
                                   "vtkEGLRenderWindow (set when there is no DISPLAY).")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the SparseSight server (default: %(default)s)")
    p.add_argument("--token", default=None, help="the server's API token (default: $SPARSESIGHT_API_TOKEN)")
    p.add_argument("--host", default="127.0.0.1", help="address the page listens on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port of the page (default: %(default)s)")
    p.add_argument("--model", default="", help="model chosen at start (default: mlcsc when served)")
    p.set_defaults(func=cmd_view)


# ----------------------------------------------------------------------------------------------------- main
#: subcommand registrars, in --help order (others add theirs here: _add_demo, _add_bench, ...)
SUBCOMMANDS = [_add_sample_data, _add_demo, _add_microstructure, _pacs.add_orthanc, _pacs.add_pacs_demo, _add_view]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sparsesight", description="SparseSight: interpretable sparse-coding "
                                     "models for medical images (served by MONAI Label, shown in 3D Slicer).")
    parser.add_argument("--version", action="version", version=f"sparsesight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``sparsesight`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's progress lines
    keep_freed_memory()  # the server's malloc settings (memory.py)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
