"""Files written so that nothing is lost or half-written: atomic writes, the
temporaries a killed run leaves, names that fit beside a file, standard output as bytes."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no locks, and no stale temporary files found
    fcntl = None

# Ends the name of every temporary file of `atomic_write` (.<name>.<8 hex>.carmask-tmp).
TEMPORARY_SUFFIX = ".carmask-tmp"


def atomic_write(path, write: Callable[[Path], None], replace: bool = True) -> None:
    """Call `write(tmp)` then move tmp onto `path`: readers never see half a file,
    and tmp never outlives the call (a signal that stops it included; after
    SIGKILL, `remove_stale_temporaries` finds it: tmp is locked while it lives).
    The file is created as any other (0666 less the umask: 0644 as a rule);
    an OSError about tmp names `path`, the file asked for. `replace`: False
    leaves a file already at `path` as it is (FileExistsError), even one
    that another process made meanwhile."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd, published = None, None, False
    try:
        while tmp is None:  # mkstemp would create 0600, whatever the umask
            candidate = sibling(path, f".{secrets.token_hex(4)}{TEMPORARY_SUFFIX}", prefix=".")
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            tmp = candidate
            _hold(fd)
        write(tmp)
        _publish(tmp, path, replace)
        published = True
    except OSError as exc:
        if tmp is not None and exc.filename in (str(tmp), tmp):
            exc.filename = str(path)
        raise
    finally:
        if tmp is not None and not published:
            tmp.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)


def _hold(fd: int) -> None:
    """Lock a temporary file while it lives, so that it is not taken for a stale one."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a file system without locks: nothing is found stale there either
        pass


def remove_stale_temporaries(folder) -> int:
    """Remove the temporary files of `atomic_write` in `folder` that no process
    holds: left by one that was killed (SIGKILL, a power cut). How many."""
    if fcntl is None:
        return 0
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMPORARY_SUFFIX)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while its writer lives
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _publish(tmp: Path, path: Path, replace: bool) -> None:
    """tmp becomes `path` in one step; without `replace`, only where nothing
    is (a hard link fails on an existing name, atomically)."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    except OSError as exc:  # a file system without hard links: checked, then moved
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def binary_stdout():
    """Standard output as a binary stream; an OSError (EBADF) where there is
    none (`>&-`: Python then has None for it)."""
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return stream


def write_all(stream, data) -> None:
    """All of `data` to a binary stream, through as many writes as it takes:
    an unbuffered one (a pipe's FileIO) may take part of it and say so by
    the count, which dropped the rest of a cut-out (64 KiB of 738 KB)."""
    view = memoryview(data)
    while view:
        view = view[stream.write(view) :]


def sibling(path, suffix: str, prefix: str = "") -> Path:
    """`prefix + name + suffix` beside `path` (a partial or temporary file).
    Where that would not fit in a file name of `path`'s folder, the name is
    cut short and ends in a hash of the whole: it fits whenever `path` fits,
    and stays one name for one path."""
    path = Path(path)
    name, room = path.name, _name_max(path.parent) - len(os.fsencode(prefix + suffix))
    if len(os.fsencode(name)) > room:
        mark = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        while name and len(os.fsencode(name + mark)) > room:
            name = name[:-1]
        name += mark
    return path.with_name(prefix + name + suffix)


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that `folder` takes (255 as a rule)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255
