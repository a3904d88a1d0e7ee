"""Atomic file writes: every file the toolkit writes (checkpoints, optimizer state, metrics,
submissions, tables, plots, overlays) goes through :func:`atomic_target`, so a crash or a
full disk mid-write never leaves a half-written file or destroys the previous one."""

import contextlib
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_target(path, suffix=".tmp"):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on any error
    remove it. A crash mid-write leaves any earlier file at ``path`` intact.

    Args:
        path: the final file. Its folder is created if needed.
        suffix: the temporary file's ending; writers that infer the format from the name
            (``.keras``, ``.png``) need the real extension at the end.

    The finished file gets the usual permissions (0666 minus the umask), not the private
    0600 of a temporary file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="." + os.path.basename(path) + ".",
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
