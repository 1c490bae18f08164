"""imapproxy with one ``imapproxy tail --json`` reader attached, as a ``--custom`` target.

    python3 bench/run.py --custom "tail=python3 bench/with_tail.py {listen} {upstream}"

Answers issue 11's question: what does one attached tail reader cost the relay? The reader is
started (retrying until the control socket exists) and then this process *becomes* the proxy
(``os.execv``), so the benchmark's relay PID and CPU figures are the proxy's alone; the reader
is the proxy's child and reads everything it is sent, writing it to /dev/null. It exits when
the proxy closes the control socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    listen, upstream = sys.argv[1], sys.argv[2]
    work = Path(tempfile.mkdtemp(prefix="imapproxy-tail-bench-"))
    control = work / "control.sock"
    config = work / "config.yaml"
    # As bench/targets.py's own imapproxy targets: every session from 127.0.0.1, one user.
    config.write_text("limits: {max_sessions_per_ip: 0, max_sessions_per_user: 0}\n")
    reader = (
        f"for i in $(seq 100); do {sys.executable} -m imapproxy tail --control {control} "
        "--json >/dev/null 2>&1 && break; sleep 0.1; done"
    )
    subprocess.Popen(["/bin/sh", "-c", reader], stdin=subprocess.DEVNULL, start_new_session=True)
    argv = [sys.executable, "-m", "imapproxy", "--config", str(config), "--control", str(control)]
    argv += ["--listen", listen, "--upstream", upstream, "--metrics", "off"]
    os.execv(sys.executable, [*argv, "--log-level", "warning"])


if __name__ == "__main__":
    main()
