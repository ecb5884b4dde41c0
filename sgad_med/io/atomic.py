"""Outputs appear atomically: everything is written under a temporary name beside the target, then renamed."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sgad_med.errors import ScanWriteError

# "No space left on device" and "disk quota exceeded": the same thing to the user, the folder cannot take more.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from, says the disk (or the user's quota) is full.

    Writers (nibabel, matplotlib, pydicom) raise a plain ``OSError`` and wrappers may chain it, so the whole chain
    of causes is searched.

    Args:
        err: the error caught (``None``: not full).

    Returns:
        ``True`` for ``ENOSPC`` ("No space left on device") or ``EDQUOT`` anywhere in the chain.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_error(folder: str | os.PathLike, fix: str = "free some space or write elsewhere") -> ScanWriteError:
    """The error to raise when ``folder`` cannot take more data (what was half written is already removed).

    Args:
        folder: the folder that was being written to, named in the message.
        fix: what the user can do (callers that know the command line name its option).

    Returns:
        A :class:`~sgad_med.errors.ScanWriteError` saying so; raise it ``from`` the ``OSError``.
    """
    return ScanWriteError(None, f"no space left on the device holding {os.fspath(folder)}", fix=fix)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` must set one to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise ScanWriteError(target, "already exists", fix="pass overwrite=True to replace it")


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``target``.

    The temporary name keeps the target's suffixes (``.nii.gz`` writers look at them) and starts with a dot
    and ``.tmp-`` so a half-written file is never mistaken for a finished one. On error it is removed; a full
    disk raises :class:`~sgad_med.errors.ScanWriteError` naming the folder.
    """
    target = Path(target)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{target.name}.", suffix="".join(target.suffixes),
                                        dir=target.parent)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(target.parent) from err
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the output gets what any new file would
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        if is_disk_full(err):  # a clear message instead of "[Errno 28]"; the half-written file goes below
            raise disk_full_error(target.parent) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    An existing ``target`` (with ``overwrite``) is first moved aside, then deleted after the rename, so at
    every moment ``target`` is either the old complete folder or the new complete folder.
    """
    target = Path(target)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the output gets what any new folder would
    old: Path | None = None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}.", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
    except OSError as err:
        if is_disk_full(err):  # a clear message instead of "[Errno 28]"; the half-written folder goes below
            raise disk_full_error(target.parent) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
