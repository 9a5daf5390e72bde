"""Open the files people name, and write the ones we make, without hanging or clobbering what is there.

Reading: `open_regular` opens a path without blocking and checks, on the open descriptor, that it is
a regular file. A FIFO opened for reading blocks until a writer comes, and a device such as
/dev/zero never ends, so a `*.safetensors` FIFO in a model directory or `plan_file=/dev/stdin`
would hang the planner; checking after the open (not with a stat before it) leaves no window in
which the path could be swapped.

Writing: `write_text` is the one writer of plan.json, hardware snapshots and calibrations. A
regular file (or a symlink to one: the link stays, its target is written) is replaced atomically,
through a temp file beside it and a rename, so a reader never sees half a file. A device or a FIFO
(`out=/dev/null`, `out=>(jq .)`), and /dev/stdout or /dev/fd/N, are written plainly and stay what
they are: renaming a temp file over one would turn /dev/null into a regular file when run as root.
A directory is refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from planner.errors import ShardwiseError


def _kind(mode: int) -> str:
    """What a non-regular file is, in words, for an error message."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def expand_user(path: str | os.PathLike) -> Path:
    """`path` with a leading `~` or `~user` expanded as a shell does: a user that does not exist (or a home that
    cannot be found) leaves the name as typed, where Path.expanduser() raises RuntimeError."""
    return Path(os.path.expanduser(os.fspath(path)))


def names_existing(path: str | os.PathLike) -> bool:
    """Whether a name a user typed is an existing path; a name no file system could hold (longer than
    NAME_MAX, a NUL byte) is simply not one, where Path.exists() would raise."""
    try:
        return expand_user(path).exists()
    except (OSError, ValueError):
        return False


def resolved(path: str | os.PathLike) -> Path:
    """`Path(path).resolve()`, failing on a symlink loop with OSError (ELOOP) as Python 3.13 does: 3.11's pathlib
    raises RuntimeError there, which no caller that handles file-system errors expects."""
    try:
        return Path(path).resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None


def open_regular(path: str | os.PathLike, what: str = "file", hint: str = ""):
    """`path` opened for binary reading if it is a regular file; else one ShardwiseError naming `what` and the path.

    Missing files raise FileNotFoundError and other OS failures OSError, as `open` does, so callers keep
    their own wording for those; only "this is not a regular file" is decided here.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # O_NONBLOCK: a FIFO without a writer opens at once instead of waiting forever
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            tail = f": {hint}" if hint else ""
            raise ShardwiseError(f"{what} {str(path)!r} is {_kind(mode)}, not a regular file{tail}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, what: str, max_bytes: int, hint: str = "") -> bytes:
    """At most `max_bytes` + 1 bytes of the regular file `path` (one byte more tells the caller it is too big)."""
    with open_regular(path, what, hint) as f:
        return f.read(max_bytes + 1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str, make_parents: bool = True) -> Path:
    """Write `text` to `path`: atomically for a regular file (through a symlink to its target), plainly to a
    device or FIFO; a directory raises IsADirectoryError, and a name ending in "/" that is no directory
    NotADirectoryError (`probe.save=nd/` must not write a file "nd"). Returns the path as given."""
    if os.fspath(path).endswith(("/", os.sep)) and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fspath(path))
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks: what is at the end of the path decides
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if (mode is not None and not stat.S_ISREG(mode)) or names_a_descriptor(path):
        _write_special(path, text)
        return path
    target = Path(os.path.realpath(path)) if path.is_symlink() else path  # a dangling link: create its target
    if make_parents and target is path:
        path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(target, text, None if mode is None else stat.S_IMODE(os.stat(target).st_mode))
    return path


def check_writable(path: str | os.PathLike, what: str, fix: str) -> None:
    """Refuse, in one line and before any work, a path `write_text` will not be able to write: a directory, a
    parent that is missing or no directory, no permission. A verb that measures for minutes (calibrate, probe's
    host speed) checks its target first instead of failing after the work is done. Creates nothing."""
    path = expand_user(path)
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a file is written through
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # a symlink loop, a name too long, a component that is a file
        raise ShardwiseError(f"cannot write {what} to {str(path)!r} ({exc.strerror or exc}): {fix}") from None
    except ValueError:  # a NUL byte
        raise ShardwiseError(f"cannot write {what} to {str(path)!r} (not a file name): {fix}") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise ShardwiseError(f"cannot write {what} to {str(path)!r}: it is a directory: {fix}")
        if not os.access(path, os.W_OK):
            raise ShardwiseError(f"cannot write {what} to {str(path)!r} (permission denied): {fix}")
        return
    target = Path(os.path.realpath(path))  # a dangling link: its target is created
    parent = target.parent
    if not parent.is_dir():
        raise ShardwiseError(f"cannot write {what} to {str(path)!r}: {str(parent)!r} is no directory: {fix}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ShardwiseError(f"cannot write {what} to {str(path)!r} ({str(parent)!r}: permission denied): {fix}")


def names_a_descriptor(path: Path) -> bool:
    """/dev/stdout, /dev/fd/N, /proc/self/fd/N: an open file of this process, which a rename would not reach
    (`out=/dev/stdout > x.json` must add to x.json through the shell's descriptor, not replace the file)."""
    full = os.path.abspath(path)
    return full in ("/dev/stdout", "/dev/stderr") or full.startswith(("/dev/fd/", "/proc/"))


def _write_special(path: Path, text: str) -> None:
    # O_NONBLOCK on open: a FIFO nobody reads fails with ENXIO at once rather than blocking forever;
    # once open, writes block normally so a slow reader gets all of it. O_APPEND: a regular file behind
    # /dev/stdout keeps what the shell already wrote there.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _replace_atomically(target: Path, text: str, keep_mode: int | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600: a new file is as readable as any the user writes, a replaced one keeps its mode
        os.chmod(tmp, keep_mode if keep_mode is not None else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
