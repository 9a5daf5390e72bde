"""Run directories: unique per process, and left behind only when a verb wrote something into one.

Each verb's `hydra.run.dir` is `outputs/<verb>/<time>_${run_id:}`: the `run_id` resolver gives
this process's id and a random suffix, so two runs started in the same second (or in two
containers that both run as pid 1) never share a directory. Hydra creates the directory before
the verb runs; `discard_if_unused` removes it again (with the `.hydra/` copy of the config and
the parents it left empty) when the verb wrote nothing there: `probe`, `plan json=true`, `chat`
without `metrics=true` and a refused run leave no trace in the current directory. Only what this
run created is removed: a `hydra.run.dir` that existed before the run (`.`, the user's `keepme`)
stays, and so do parents that were there (`RecordRunDir` notes them before Hydra creates anything).
"""

from __future__ import annotations

import os
import secrets
import shutil
from functools import cache
from pathlib import Path

from hydra.experimental.callback import Callback

from planner.files import resolved


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


def _only_hydra_leftovers(run_dir: Path, held: frozenset) -> bool:
    """Whether everything in `run_dir` that was not there before (`held`) is what Hydra writes."""
    for entry in run_dir.iterdir():
        if entry.name in held:
            continue
        if entry.name == ".hydra" and entry.is_dir() and not entry.is_symlink():
            if any(child.name not in _HYDRA_FILES or not child.is_file() for child in entry.iterdir()):
                return False
        elif not (entry.suffix == ".log" and entry.is_file() and entry.stat().st_size == 0):
            return False
    return True


# What was on disk where this process's run directory goes, recorded before Hydra created it:
# {run directory: (names it held, or None when it did not exist; the nearest ancestor that existed)}.
# `hydra.run.dir=.` or `hydra.run.dir=keepme` names a directory the user owns: clean-up takes back only
# what this run added, never the directory itself or a parent that was there before.
_BEFORE: dict[Path, tuple[frozenset | None, Path]] = {}


def record_before(run_dir: str | os.PathLike) -> None:
    """Note what exists at `run_dir` (and which ancestor exists) before the run creates anything there."""
    try:
        path = resolved(run_dir)
    except OSError:  # a symlink loop: Hydra cannot make the directory either, and says so; nothing to record
        return
    held = frozenset(e.name for e in path.iterdir()) if path.is_dir() else None
    ancestor = path if held is not None else next((p for p in path.parents if p.exists()), Path(path.anchor))
    _BEFORE[path] = (held, ancestor)


class RecordRunDir(Callback):
    """Hydra callback (registered by shardwise.verbs.app.run_verb): records the run directory before Hydra makes it."""

    def on_run_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        record_before(str(OmegaConf.select(config, "hydra.run.dir")))


def discard_if_unused(run_dir: Path, stop_at: Path) -> bool:
    """Take back what this run added to `run_dir` if that is only Hydra's leftovers: the directory itself and its
    empty parents below `stop_at` when this run created them, else only the entries it added."""
    try:
        run_dir, stop_at = resolved(run_dir), resolved(stop_at)
    except OSError:
        return False  # a symlink loop holds nothing this run made
    if run_dir not in _BEFORE:
        return False  # no record of what was there before (a caller outside run_verb): nothing is known to be ours
    held, ancestor = _BEFORE[run_dir]
    try:
        if not run_dir.is_dir() or not _only_hydra_leftovers(run_dir, held or frozenset()):
            return False
        added = [e for e in run_dir.iterdir() if held is None or e.name not in held]
        for entry in added:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if held is not None:
            return True  # the directory was there before the run: it stays
        run_dir.rmdir()
        parent = run_dir.parent
        while parent != stop_at and stop_at in parent.parents and parent != ancestor and ancestor in parent.parents:
            parent.rmdir()  # raises OSError once a parent holds anything else (another run's directory)
            parent = parent.parent
    except OSError:
        pass  # best effort: a directory someone else is writing into stays
    return True
