"""``sparsesight orthanc`` and ``sparsesight pacs-demo`` (the PACS set-up of issue 20; registered in cli.py).

Heavy imports stay inside the handlers so ``sparsesight --help`` stays fast."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def cmd_orthanc(args: argparse.Namespace) -> int:
    """A local Orthanc (DICOMweb) on 127.0.0.1 until Ctrl-C."""
    from .orthanc import Orthanc

    o = Orthanc(args.folder, port=args.port)
    try:
        o.start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Orthanc on {o.url}; DICOMweb root {o.dicomweb}; storage {Path(args.folder).resolve()} (Ctrl-C stops it)",
          flush=True)
    try:
        while o.proc is not None and o.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        o.stop()
    return 0


def add_orthanc(sub) -> None:
    p = sub.add_parser("orthanc", help="run a local Orthanc PACS (DICOMweb) on 127.0.0.1 for the PACS set-up",
                       description="Runs Debian's Orthanc with its DICOMweb plugin as a child process on 127.0.0.1 "
                                   "(apt-get install orthanc orthanc-dicomweb first).")
    p.add_argument("--folder", default="out/orthanc", help="storage and configuration folder (default %(default)s)")
    p.add_argument("--port", type=int, default=8042, help="HTTP port (default %(default)s)")
    p.set_defaults(func=cmd_orthanc)


def cmd_pacs_demo(args: argparse.Namespace) -> int:
    from .pacs_demo import run

    try:
        run(out=args.out, cases=args.cases, downsample=args.downsample, epochs=args.epochs, seed=args.seed,
            keep=args.keep)
    except (RuntimeError, FileNotFoundError, TimeoutError) as e:
        print(f"pacs demo failed: {e}", file=sys.stderr)
        return 1
    return 0


def add_pacs_demo(sub) -> None:
    p = sub.add_parser("pacs-demo", help="the demo against a local Orthanc: DICOM in, SEG and Parametric Maps out")
    p.add_argument("--out", default="out/pacs-demo", help="working folder (Orthanc storage, cache, model)")
    p.add_argument("--cases", type=int, default=3, help="phantom studies stored in Orthanc (default 3)")
    p.add_argument("--downsample", type=int, default=4, help="phantom voxel size in mm (default 4)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs on the PACS data (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep Orthanc and the server running at the end")
    p.set_defaults(func=cmd_pacs_demo)
