"""The directory through which the processes of one `serve` run share their metrics.

prometheus_client's multiprocess mode keeps each process's values in memory-mapped
files of one directory, and chooses that mode when it is first imported, from
`PROMETHEUS_MULTIPROC_DIR`. So `serve` makes a private directory for the run and names
it in the environment before anything imports prometheus_client (this module must not
import it); workers are spawned interpreters and inherit the variable. The directory is
removed when the run ends; one left by a run that was killed (SIGKILL) is removed by the
next run on the machine, once its process is gone (its name carries the PID).

A directory per run, not one under the data directory: two runs may share a data
directory (processes of one host on one database), and each must add up only its own
processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import FrameType

__all__ = ["ENV", "begin", "disable", "end", "end_on_signal"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LEGACY_ENV = "prometheus_multiproc_dir"  # read by prometheus_client too
_PREFIX = "acme-ca-metrics-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _sweep(parent: Path) -> None:
    """Remove the directories of runs whose process is gone."""
    for path in parent.glob(f"{_PREFIX}*"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def begin(parent: Path | None = None) -> Path:
    """A fresh directory for this run, named in the environment (for this process and
    the workers it starts). Call it before prometheus_client is imported."""
    parent = parent or Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        _sweep(parent)
    directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent))
    os.environ.pop(_LEGACY_ENV, None)
    os.environ[ENV] = str(directory)
    return directory


def disable() -> None:
    """Metrics off: no process of this run records (nor into a directory the operator's
    environment may name)."""
    os.environ.pop(ENV, None)
    os.environ.pop(_LEGACY_ENV, None)


def end(directory: Path) -> None:
    if os.environ.get(ENV) == str(directory):
        del os.environ[ENV]
    shutil.rmtree(directory, ignore_errors=True)


def end_on_signal(directory: Path) -> None:
    """Remove the directory when SIGTERM or SIGINT ends this process, then let the
    signal end it. uvicorn serving in this process (`--workers 1`) shuts down gracefully
    on either and then raises it again with the handler it found, which is this one:
    the process ends by the signal as before, and no code after the server runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        end(directory)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
