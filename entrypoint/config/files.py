"""Files the operator names (the env file, the model registry file, the `*_FILE` secrets): read only when they
are regular files (or links to one), never blocking, and never more than a size that suits their kind. A FIFO
would block `check` for ever and a device (/dev/zero, /dev/urandom) would be read for ever; both are refused,
like a file too big to be what it claims, with a message that the caller prefixes with the setting's name."""
from __future__ import annotations

import errno
import os
import stat

ENV_FILE_LIMIT = 1 << 20  # an .env of settings is a few KB
REGISTRY_FILE_LIMIT = 1 << 20  # a model registry of a few hundred entries
SECRET_FILE_LIMIT = 64 << 10  # a key, a token, a password

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class FileProblem(ValueError):
    """Why a named file cannot be used; the message names no secret (it never quotes the contents)."""


def read_bounded(path: str, limit: int) -> bytes:
    """The whole file, if it is a regular file of at most `limit` bytes; else FileProblem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as e:
        raise FileProblem(f"cannot read the file ({getattr(e, 'strerror', None) or e}); mount it or fix the "
                          "path") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise FileProblem(f"is {kind}, not a regular file; name a file")
        chunks, size = [], 0
        while size <= limit:
            try:
                chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    continue
                raise FileProblem(f"cannot read the file ({e.strerror})") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileProblem(f"is larger than {limit // 1024} KiB, too big for what it names; name the right file")
        return b"".join(chunks)
    finally:
        os.close(fd)
