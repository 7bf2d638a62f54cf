"""Crash-safe file writes: a reader sees the old file or the new one, never a mix of both."""
import os
from pathlib import Path

from .errors import PatchDropError


def write_atomically(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``. A failure on the way (a full disk, a kill) leaves the previous ``path`` untouched and no
    temporary file behind, and raises a PatchDropError that names the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise PatchDropError(f"could not write {path} ({err.strerror or err}); the previous version of "
                             f"the file is intact") from None
    finally:
        tmp.unlink(missing_ok=True)
