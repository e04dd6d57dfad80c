"""Running ``certify`` commands in subprocesses, alone or under torchrun, for the tests of
several processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_certify(args: list[str], processes: int = 1, timeout: int = 300) -> str:
    """Run ``certify ARGS`` in ``processes`` gloo processes; return its stderr."""
    if processes == 1:
        cmd = [sys.executable, "-m", "certify", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
        cmd += [f"--master-port={_free_port()}", "-m", "certify", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0 or _aborted_after_writing(done.stderr), done.stderr[-3000:]
    return done.stderr


# gloo's threads now and then abort a process while the interpreter exits, after certify
# has written everything; the caller's checks of the outputs still decide.
_TEARDOWN_ABORT = "terminate called without an active exception"


def _aborted_after_writing(stderr: str) -> bool:
    """Whether the only failure is that abort, after the command's last output line."""
    abort = stderr.find(_TEARDOWN_ABORT)
    return abort >= 0 and "\nwrote " in stderr[:abort] and "Traceback" not in stderr[:abort]
