"""The run's directory: fresh at the start, named in the environment, gone at the end,
and those of runs that were killed removed by the next."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from acme_ca.metrics import run


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # begin/disable/end change os.environ: undone after each test.
    monkeypatch.delenv(run.ENV, raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                           capture_output=True, text=True)  # fmt: skip
    return int(child.stdout)


def test_a_run_gets_a_fresh_directory_named_in_the_environment(tmp_path: Path) -> None:
    directory = run.begin(tmp_path)
    assert directory.parent == tmp_path
    assert directory.name.startswith(f"acme-ca-metrics-{os.getpid()}-")
    assert list(directory.iterdir()) == []
    assert os.environ[run.ENV] == str(directory)
    (directory / "counter_1.db").write_bytes(b"x")
    run.end(directory)
    assert not directory.exists()
    assert run.ENV not in os.environ


def test_directories_of_dead_runs_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / f"acme-ca-metrics-{_dead_pid()}-abc"
    live = tmp_path / f"acme-ca-metrics-{os.getppid()}-def"
    other = tmp_path / "acme-ca-metrics-notapid"
    for path in (dead, live, other):
        path.mkdir()
    directory = run.begin(tmp_path)
    try:
        assert not dead.exists()
        assert live.exists()
        assert other.exists()
    finally:
        run.end(directory)


def test_metrics_off_clears_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(run.ENV, "/somewhere")
    monkeypatch.setenv("prometheus_multiproc_dir", "/elsewhere")
    run.disable()
    assert run.ENV not in os.environ
    assert "prometheus_multiproc_dir" not in os.environ
