"""Run one shardwise verb as a Hydra app: argv in, `task(cfg)` run, bad input as one line (exit 2).

Every verb (plan, probe, chat, serve, launch, calibrate) goes through `run_verb`, so they share the config
groups, the model names and the error contract: a `ShardwiseError` prints `shardwise <verb>: error: <message>`
and exits 2, never a traceback. What Hydra refuses before the verb runs (a typo'd key, a value of the wrong
type, an option file that does not exist, an override it cannot parse, a run directory it cannot create)
follows the same contract. In a `shardwise plan -m` sweep a refused combination is reported and the other
jobs still run; the sweep then exits 2. What the overrides mean, and where conf/ is, is planner.config's
(overrides.py); this module is the run around a verb, and where the verbs read what this run was typed
(`typed_overrides`, for the remote-code consent).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from planner.config.overrides import (
    check_composed,
    composition_error,
    first_line,
    hydra_app,
    normalize_overrides,
    refuse_rerun,
)
from planner.errors import ShardwiseError


def writable_run_dirs(args: list[str], config_name: str, cwd: str | None = None) -> list[str]:
    """`args`, with Hydra's run and sweep directories moved under the temp directory when the working directory
    is read-only: Hydra creates its run directory before any verb starts, and `plan json=true` or `probe`, which
    write nothing there, must not fail for it (a run directory left unused is removed again)."""
    import tempfile

    cwd = cwd or os.getcwd()
    given = {a.lstrip("+").partition("=")[0] for a in args}
    if os.access(cwd, os.W_OK) or {"hydra.run.dir", "hydra.sweep.dir"} & given:
        return args
    base = Path(tempfile.gettempdir()) / "shardwise-outputs" / config_name
    if not str(base).isascii() or set("'\\") & set(str(base)):
        return args  # a temp path Hydra cannot take quoted as it is: Hydra's own one-line refusal stands
    stamp = "${now:%Y-%m-%d_%H-%M-%S}_${run_id:}"
    return [*args, f"hydra.run.dir='{base}/run/{stamp}'", f"hydra.sweep.dir='{base}/multirun/{stamp}'"]


def fail(verb: str, message: str, code: int = 2) -> None:
    print(f"shardwise {verb}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _refusal(exc: BaseException, verb: str, task_started: bool) -> ShardwiseError | None:
    """One line for what Hydra refused before the task ran (composition, unwritable run directory), else None."""
    error = composition_error(exc, verb)
    if error is None and 'Could not detect "srun"' in str(exc):
        error = ShardwiseError(
            "a hydra/launcher=slurm_* or submitit_slurm launch needs a SLURM cluster and this machine has no "
            "`srun`: run it on a SLURM login node, or add launch.dry_run=true (without -m) to print the commands"
        )
    from hydra.errors import SearchPathException

    if error is None and isinstance(exc, SearchPathException):  # --config-dir naming no directory
        error = ShardwiseError(f"{first_line(exc).rstrip('.')}: give --config-dir an existing directory of configs")
    if error is None and isinstance(exc, OSError) and not task_started:
        where = exc.filename if exc.filename is not None else "the run directory"
        error = ShardwiseError(
            f"cannot create {str(where)!r} ({exc.strerror or exc}): "
            "run shardwise from a writable directory or set hydra.run.dir=DIR"
        )
    return error


@contextmanager
def _hydra_raises():
    """Have Hydra raise what it would otherwise print as a multi-line report and exit 1 with.

    HYDRA_FULL_ERROR=1 is Hydra's documented switch for that; run_verb then turns composition
    errors into one line (exit 2) and lets anything else, a bug, raise with its traceback. The
    user's own setting is restored afterwards.
    """
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


@contextmanager
def _compose_once(args: list[str]):
    """Have Hydra compose the config once per run, not twice.

    hydra.main composes the whole config a first time only to read `hydra.mode` (Hydra.get_mode),
    then again to run: half of a cold `shardwise plan`. No file in conf/ sets `hydra.mode`, so it
    comes from the command line alone (`-m`, or a `hydra.mode=` override); without such an override
    get_mode answers None ("decide from -m") without composing. With one, Hydra's own get_mode runs.
    """
    from hydra._internal.hydra import Hydra

    if any(arg.lstrip("+~").startswith("hydra.mode=") for arg in args):
        yield
        return
    original = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = original


_FAILED_JOBS: list[str] = []


def run_verb(verb: str, config_name: str, task: Callable, argv: list[str]) -> None:
    """Run `task(cfg)` as the Hydra app `conf/<config_name>.yaml` with `argv` as overrides."""
    try:
        refuse_rerun(argv)
        args = writable_run_dirs(normalize_overrides(argv), config_name)
    except ShardwiseError as exc:
        fail(verb, str(exc))
    args = _with_run_dir_record(args)
    task_started: list[bool] = []

    def guarded(cfg):
        task_started.append(True)
        try:
            check_composed(cfg, config_name)
            try:
                return task(cfg)
            except OSError as exc:
                if exc.filename is None:
                    raise
                # a path the user gave that the system refuses (name too long, no permission, a directory...)
                raise ShardwiseError(
                    f"cannot use {str(exc.filename)[:120]!r} ({exc.strerror or exc}): "
                    "give a path that exists and is readable"
                ) from None
        except ShardwiseError as exc:
            if verb == "plan" and _in_sweep():
                # One bad combination of a sweep must not cost the others: report it, go on, exit 2 at the end.
                print(f"shardwise {verb}: error: [{_job_overrides()}] {exc}", file=sys.stderr)
                _FAILED_JOBS.append(str(exc))
                return None
            fail(verb, str(exc), exc.exit_code)
        finally:
            _discard_unused_run_dir()

    guarded.__name__ = f"shardwise_{verb}"
    guarded.__module__ = task.__module__
    app = hydra_app(config_name, guarded)
    saved = sys.argv
    sys.argv = [f"shardwise {verb}", *args]
    _FAILED_JOBS.clear()
    try:
        with _hydra_raises(), _compose_once(args):
            app()
    except Exception as exc:
        error = exc if isinstance(exc, ShardwiseError) else _refusal(exc, verb, bool(task_started))
        if error is None:
            raise
        fail(verb, str(error))
    finally:
        sys.argv = saved
    if _FAILED_JOBS:
        fail(verb, f"{len(_FAILED_JOBS)} job(s) of the sweep failed (see the errors above)")


_RECORD_RUN_DIR = "+hydra.callbacks.shardwise_run_dir._target_=planner.config.rundir.RecordRunDir"


def _with_run_dir_record(args: list[str]) -> list[str]:
    """`args` with the callback that records what was at hydra.run.dir before Hydra created it (the clean-up
    removes only what the run made). Placed next to the first override: Hydra's parser takes overrides as one
    block, and `--info` takes the word after it as its value."""
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), 0)
    return [*args[:first], _RECORD_RUN_DIR, *args[first:]]


def _discard_unused_run_dir() -> None:
    """A run that wrote nothing into its run directory leaves none behind (sweeps keep theirs)."""
    from hydra.core.hydra_config import HydraConfig

    from planner.config.rundir import discard_if_unused

    if not _in_sweep():
        discard_if_unused(Path(HydraConfig.get().runtime.output_dir), Path(os.getcwd()))


def _job_overrides() -> str:
    from hydra.core.hydra_config import HydraConfig

    return " ".join(HydraConfig.get().overrides.task)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def typed_overrides() -> list[str]:
    """The overrides this run was given on its command line; none when composed outside a Hydra run (tests)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def given_on_command_line(key: str) -> bool:
    """Whether this run's command line set `key` (`key=...`, `+key=...`), not a default from conf/."""
    return any(str(o).lstrip("+~").split("=", 1)[0] == key for o in typed_overrides())


def remote_code_consent(cfg) -> bool:
    """Whether this run's own command line allows code from the model directory: `trust_remote_code=true`,
    or `model.trust_remote_code=true` typed for a fresh plan (a plan file or a profile cannot consent for you)."""
    from planner.config.overrides import flag
    from runner.engine.preflight import consents_to_remote_code

    return consents_to_remote_code(
        flag(cfg, "trust_remote_code"), typed_overrides(), fresh_plan=not cfg.get("plan_file")
    )
