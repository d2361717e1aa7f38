"""Run a training script in two CPU processes (``torch.distributed.run``, gloo) for the DDP tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def run_two_processes(script: Path, timeout: float, what: str) -> None:
    """Run ``script`` in two processes with one thread each; fail the test on a non-zero exit or when they
    take longer than ``timeout`` seconds (``what`` says what they were doing: a collective that waits for a
    gradient that never comes would otherwise block the suite). The launcher and both workers run in their
    own process group, so a hang ends all three."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=script.parent, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"two processes did not finish {what} in {timeout} s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
