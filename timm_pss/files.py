"""Output files and folders: atomic writes, and new folders claimed without touching anyone else's.

Every file timm_pss writes goes through `atomic_path` / `atomic_write`: the content is written to a temporary in the
same folder (prefix `TEMP_PREFIX`, the writing process's id in its name), flushed, fsynced and renamed over the
target with `os.replace`. A reader, or a process killed mid-write, sees the old file or the new one, never a part;
on any exception the temporary is removed. Temporaries left by a killed process (one no longer running) are removed
the next time something is written into that folder.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional, Union

__all__ = ['TEMP_PREFIX', 'atomic_path', 'atomic_write', 'write_text_atomic', 'write_bytes_atomic',
           'remove_stale_temporaries', 'claim_new_dir', 'check_new_file']

TEMP_PREFIX = '.timm_pss-tmp-'
PathLike = Union[str, os.PathLike]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(folder: PathLike) -> list:
    """Remove this module's temporaries in `folder` whose writing process is gone; returns the removed paths."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        pid = entry.name[len(TEMP_PREFIX):].split('-', 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_running(int(pid)):
            try:
                os.remove(entry.path)
                removed.append(entry.path)
            except OSError:
                pass
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that wants a file name (torch.save, savefig, ...).

    When the block ends without an exception the temporary is fsynced and renamed to `path`; otherwise it is
    removed and `path` is left exactly as it was. The temporary keeps `path`'s suffix, so writers that pick a
    format from the extension still work.
    """
    target = Path(path)
    folder = target.parent
    remove_stale_temporaries(folder)
    temp = folder / f'{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{target.name}'
    try:
        yield temp
        with open(temp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.remove(temp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


@contextmanager
def atomic_write(path: PathLike, mode: str = 'w', encoding: str = 'utf-8',
                 newline: Optional[str] = None) -> Iterator[IO]:
    """`open(path, mode)` for writing, made atomic: the file appears complete at `path` when the block ends."""
    if mode not in ('w', 'wb'):
        raise ValueError(f'atomic_write writes whole files: mode must be "w" or "wb", got {mode!r}')
    with atomic_path(path) as temp:
        if mode == 'wb':
            with open(temp, 'wb') as f:  # atomic: the temporary, renamed by atomic_path
                yield f
        else:
            with open(temp, 'w', encoding=encoding, newline=newline) as f:  # atomic: renamed by atomic_path
                yield f


def write_text_atomic(path: PathLike, text: str, encoding: str = 'utf-8') -> None:
    """Write `text` to `path` atomically."""
    with atomic_write(path, 'w', encoding=encoding) as f:
        f.write(text)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_write(path, 'wb') as f:
        f.write(data)


def claim_new_dir(path: PathLike, max_suffix: int = 1000) -> Path:
    """Create a new folder at `path`, or at `path-1`, `path-2`, ... when taken (as timm's get_outdir(inc=True)).

    Each attempt is one `mkdir`, which fails if the folder exists, so two processes claiming the same name at the
    same time get different folders and never share one. The parent folders are created as needed.
    """
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for count in range(max_suffix + 1):
        candidate = base if count == 0 else base.with_name(f'{base.name}-{count}')
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f'{base} and {base.name}-1 .. {base.name}-{max_suffix} all exist; choose another name')


def check_new_file(path: PathLike, force: bool = False) -> Path:
    """Check, before any long work, that `path` can be written: its folder exists and is writable, and the file
    does not exist yet (unless `force`). Raises ValueError saying what is wrong and what to do."""
    target = Path(path)
    if not str(path) or target.name in ('', '.', '..'):
        raise ValueError(f'{str(path)!r} is not a file name')
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f'{target}: the folder {folder} does not exist; create it first or choose another path')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f'{target}: the folder {folder} is not writable; choose another path')
    if target.is_dir():
        raise ValueError(f'{target} is a folder; give a file name')
    if target.exists() and not force:
        raise ValueError(f'{target} exists; choose another path or pass --force to replace it')
    return target
