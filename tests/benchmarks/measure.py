"""Run one command in a child process and measure it: wall seconds and the child's peak RSS.

The measurement is taken by a fresh, small wrapper process (this file run as a script):
it starts the command, waits for it with os.wait4() and writes the wall time and the
command's ru_maxrss to a file. A wrapper is needed because Linux carries the RSS of the
process that forked into the child's ru_maxrss; the benchmark's own process holds moto
and pandas, the wrapper only the standard library.

    python measure.py RESULT_FILE -- command args...
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

# The child running now, so that Ctrl-C (or any failure) can stop it: see stop_running().
_running: subprocess.Popen | None = None


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message ends with its stderr's last lines."""


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float
    stdout: str
    cpu_seconds: float = 0.0  # user + system time of the command itself (not of the servers)


def measure(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, what: str = "") -> Measurement:
    """Run `argv` to completion; its wall time and peak RSS. Raises CommandFailed on exit != 0."""
    global _running
    os.sync()  # what an earlier step wrote (the generated files) is not written back during this one
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".json") as result:
        wrapper = [sys.executable, "-S", __file__, result.name, "--", *argv]
        proc = subprocess.Popen(wrapper, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _running = proc
        try:
            proc.wait()
        finally:
            _running = None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
        figures = json.loads(Path(result.name).read_text() or "{}")
    if proc.returncode != 0 or not figures:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise CommandFailed(f"{what or argv[0]} exited {proc.returncode}:\n{tail}")
    return Measurement(seconds=figures["seconds"], peak_rss_mb=figures["peak_rss_kb"] / 1024, stdout=stdout,
                       cpu_seconds=figures["cpu_seconds"])


def run_and_record(result_file: str, argv: Sequence[str]) -> int:
    """The wrapper: run `argv`, write its seconds and peak RSS to `result_file`, return its exit code."""
    started = time.perf_counter()
    child = subprocess.Popen(list(argv))

    def forward(signum, frame):  # Ctrl-C or the benchmark stopping: stop the command too
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            _, status, usage = os.wait4(child.pid, 0)
            break
        except InterruptedError:
            continue
    seconds = time.perf_counter() - started
    child.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if code == 0:
        Path(result_file).write_text(json.dumps({
            "seconds": seconds, "peak_rss_kb": usage.ru_maxrss, "cpu_seconds": usage.ru_utime + usage.ru_stime,
        }))
    return code


def stop_running() -> None:
    """Terminate the measured command, if any (on Ctrl-C or an error in this process)."""
    proc = _running
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the wrapper passes it on to the command
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: measure.py RESULT_FILE -- command [args...]")
    raise SystemExit(run_and_record(sys.argv[1], sys.argv[3:]))
