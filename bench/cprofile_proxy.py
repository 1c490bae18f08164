"""Run imapproxy under cProfile with a CPU-time clock; write the stats on exit (SIGINT).

    python3 bench/cprofile_proxy.py OUT.pstats [imapproxy arguments...]

``python -m cProfile`` times with the wall clock, which charges a ``send()`` for the time the
process spends preempted by the peer it just woke (on 2 cores that is most of it); this
charges CPU time only (``time.process_time``), so percentages are shares of the proxy's CPU.
bench/run.py --profile cprofile starts imapproxy through this.
"""

from __future__ import annotations

import cProfile
import sys
import time

from imapproxy.cli import main


def run() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        return main(argv)
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    raise SystemExit(run())
