"""``PYTHONPATH=tests python -m xapisim --lab FILE --state DIR --port N [--host H] [--tls]``"""

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from . import lab as lab_mod
from .server import Simulator, serve
from .tls import certificate


def main(argv=None):
    p = argparse.ArgumentParser(prog="xapisim", description="XAPI simulator for the xapi.proxy collection's tests")
    p.add_argument("--lab", required=True, help="lab file (YAML) describing the pool; read on first start")
    p.add_argument("--state", required=True, help="state directory (database, disks); reused across restarts")
    p.add_argument("--port", type=int, default=443, help="port every host listens on (default 443)")
    p.add_argument("--host", default=None, help="address of the pool master (default: the lab's, 127.0.0.1)")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with a self-signed certificate")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    state = Path(args.state)
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        sim = Simulator(state)
        if sim.db.load():
            sim.after_load()
        else:
            lab_mod.build(sim, lab_mod.load(args.lab), args.host)
    except (lab_mod.LabError, ValueError, KeyError) as e:
        print(f"xapisim: bad lab file {args.lab}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unreadable lab file, or a state folder that cannot be written (a full disk)
        print(f"xapisim: cannot build the lab from {args.lab} in {state}: {e}", file=sys.stderr)
        return 2
    addresses = [rec["address"] for _, rec in sim.db.all("host")]
    context = None
    if args.tls:
        cert, context = certificate(state / "tls", addresses + ["localhost"])
    servers = serve(sim, addresses, args.port, context)
    if not servers:
        print("xapisim: could not listen on any host address", file=sys.stderr)
        return 1
    scheme = "https" if args.tls else "http"
    master = sim.db.field("host", sim.master_ref(), "address")
    for srv in servers:
        address = srv.server_address[0]
        role = "master" if address == master else "member"
        print(f"xapisim: listening on {scheme}://{address}:{args.port} ({role})", flush=True)
    if args.tls:
        print(f"xapisim: tls certificate {cert}", flush=True)
    print("xapisim: ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for srv in servers:
        srv.shutdown()
    sim.db.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
