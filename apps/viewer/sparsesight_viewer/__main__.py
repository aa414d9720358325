"""`python -m sparsesight_viewer --url http://127.0.0.1:8000 --port 8080` (what `sparsesight view` runs)."""
from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sparsesight view", description="The SparseSight review page (trame-slicer).")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the SparseSight server (default: %(default)s)")
    p.add_argument("--token", default=None, help="the server's API token (default: $SPARSESIGHT_API_TOKEN)")
    p.add_argument("--host", default="127.0.0.1", help="address the page listens on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port of the page (default: %(default)s)")
    p.add_argument("--model", default="", help="model chosen at start (default: mlcsc when served)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("trame_server", "trame_client", "wslink", "aiohttp"):  # their INFO lines are per-widget noise
        logging.getLogger(name).setLevel(logging.WARNING)
    from .app import serve

    token = args.token if args.token is not None else os.environ.get("SPARSESIGHT_API_TOKEN", "")
    serve(args.url, token=token, host=args.host, port=args.port, model=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
