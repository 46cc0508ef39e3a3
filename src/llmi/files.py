"""Files at the edge: written whole or not at all, read never past a cap.

A reader of a file that :func:`atomic_write` writes sees the old file or the new one, never half of one:
the data goes to a temporary file in the same folder, which is then renamed over the target.
:func:`read_capped` reads a regular file or a pipe but refuses a folder, a device such as ``/dev/zero``
or anything above its limit with a one-line reason, instead of hanging or filling memory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename (parent folders
    are created; text is UTF-8, a lone surrogate becomes U+FFFD).

    The file gets ``mode``; by default the mode a plain ``open()`` would give it under the current umask
    (mkstemp's 0600 would hide a rendered page from a web server). Private files pass ``mode=0o600``.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_capped(path: str | os.PathLike[str], name: str, limit: int) -> bytes:
    """The bytes of a regular file or a pipe at ``path``, never more than ``limit``.

    Raises :class:`~llmi.errors.InputError` with a one-line reason that begins with ``name`` (what the
    user calls the file, e.g. ``"input image owl.png"``): missing, unreadable, a folder, a device, or
    above ``limit``.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{name} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name} is a folder, not a file")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise InputError(f"{name} is not a regular file")
    if st.st_size > limit:
        raise InputError(f"{name} is too large ({st.st_size / 2**20:.0f} MiB; the limit is {limit // 2**20} MiB)")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{name} is too large (the limit is {limit // 2**20} MiB)")
    return data
