"""Writing a user's file so that it is never half-written: the new content goes to a temporary
file beside it and replaces the file in one rename, only once it is complete."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def replaced_when_complete(path, mode: str = "w"):
    """A file object for writing ``path``: a temporary file in ``path``'s folder, renamed onto
    ``path`` when the block ends without an error (atomically, keeping an existing file's
    permissions); after an error or an interrupt it is removed and ``path`` is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            if not fh.closed:  # a writer may have closed it already (its data then written)
                fh.flush()
                os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
