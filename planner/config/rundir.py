"""Run directories: unique per process, and left behind only when a verb wrote something into one.

Each verb's `hydra.run.dir` is `outputs/<verb>/<time>_${run_id:}`: the `run_id` resolver gives
this process's id and a random suffix, so two runs started in the same second (or in two
containers that both run as pid 1) never share a directory. Hydra creates the directory before
the verb runs; `discard_if_unused` removes it again (with the `.hydra/` copy of the config and
the parents it left empty) when the verb wrote nothing there: `probe`, `plan json=true`, `chat`
without `metrics=true` and a refused run leave no trace in the current directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
from functools import cache
from pathlib import Path


@cache
def run_id() -> str:
    """This process's part of a run directory name: pid and 4 random hex digits, fixed for the process."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """Make `${run_id:}` available to the configs; idempotent."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id)


_HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def _only_hydra_leftovers(run_dir: Path) -> bool:
    for entry in run_dir.iterdir():
        if entry.name == ".hydra" and entry.is_dir():
            if any(child.name not in _HYDRA_FILES or not child.is_file() for child in entry.iterdir()):
                return False
        elif not (entry.suffix == ".log" and entry.is_file() and entry.stat().st_size == 0):
            return False
    return True


def discard_if_unused(run_dir: Path, stop_at: Path) -> bool:
    """Remove `run_dir` if it holds only what Hydra put there, then its empty parents below `stop_at`."""
    run_dir = Path(run_dir).resolve()
    stop_at = Path(stop_at).resolve()
    try:
        if not run_dir.is_dir() or not _only_hydra_leftovers(run_dir):
            return False
        shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
        for log in run_dir.glob("*.log"):
            log.unlink()
        run_dir.rmdir()
        parent = run_dir.parent
        while parent != stop_at and stop_at in parent.parents:
            parent.rmdir()  # raises OSError once a parent holds anything else (another run's directory)
            parent = parent.parent
    except OSError:
        pass  # best effort: a directory someone else is writing into stays
    return True
