"""Output files and folders: atomic writes, and new folders claimed without touching anyone else's.

Every file timm_pss writes goes through `atomic_path` / `atomic_write`: the content is written to a temporary in the
same folder (prefix `TEMP_PREFIX`, the writing process's id in its name), flushed, fsynced and renamed over the
target with `os.replace`. A reader, or a process killed mid-write, sees the old file or the new one, never a part;
on any exception the temporary is removed. Temporaries left by a killed process (one no longer running) are removed
the next time something is written into that folder.
"""
from __future__ import annotations

import os
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional, Sequence, Union

__all__ = ['TEMP_PREFIX', 'atomic_path', 'atomic_write', 'write_text_atomic', 'write_bytes_atomic',
           'remove_stale_temporaries', 'claim_new_dir', 'check_new_file', 'check_replaceable', 'check_output_dir']

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


def _kind(mode: int) -> str:
    return ('a symbolic link' if stat.S_ISLNK(mode) else 'a folder' if stat.S_ISDIR(mode) else
            'a named pipe (FIFO)' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode) else
            'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'not a regular file')


def check_replaceable(path: PathLike) -> None:
    """Refuse a path that exists and is not a regular file (a symlink, FIFO, device, socket or folder): writing
    over it would replace that thing with a file (`os.replace` does not follow links). ValueError saying which."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise ValueError(f'{path} is {_kind(mode)}; timm_pss writes only new files or over regular files: choose '
                         f'another path')


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that wants a file name (torch.save, savefig, ...).

    When the block ends without an exception the temporary is fsynced and renamed to `path`; otherwise it is
    removed and `path` is left exactly as it was. The temporary keeps `path`'s suffix, so writers that pick a
    format from the extension still work. Only a regular file is ever replaced: a `path` that is a symlink, FIFO,
    device, socket or folder is refused (`check_replaceable`) before anything is written, and again right before
    the rename.
    """
    target = Path(path)
    check_replaceable(target)
    folder = target.parent
    remove_stale_temporaries(folder)
    temp = folder / f'{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{target.name}'
    try:
        yield temp
        with open(temp, 'rb+') as f:
            os.fsync(f.fileno())
        check_replaceable(target)  # it may have changed while the content was written
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
    does not exist yet (unless `force`, which replaces a regular file only). Raises ValueError saying what is wrong
    and what to do."""
    target = Path(path)
    if not str(path) or target.name in ('', '.', '..'):
        raise ValueError(f'{str(path)!r} is not a file name')
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f'{target}: the folder {folder} does not exist; create it first or choose another path')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f'{target}: the folder {folder} is not writable; choose another path')
    if target.is_dir() and not target.is_symlink():
        raise ValueError(f'{target} is a folder; give a file name')
    check_replaceable(target)
    if target.exists() and not force:
        raise ValueError(f'{target} exists; choose another path or pass --force to replace it')
    return target


def check_output_dir(path: PathLike, force: bool = False, protected: Sequence[str] = (),
                     what: str = 'a training run folder') -> Path:
    """Check that a command may write its files into the folder `path`: a new or empty folder, or with `force` one
    holding other files (only regular files are ever replaced, see `atomic_path`), but never a folder holding one
    of the `protected` names (exact, or `*SUFFIX`; `what` names such a folder). ValueError saying what is wrong."""
    if not str(path).strip():
        raise ValueError('the output folder is empty (""); give a new folder')
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f'{out} is not a folder; give a new or empty folder')
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        found = [m for m in names if any(m == n or (n.startswith('*') and m.endswith(n[1:])) for n in protected)]
        if found:
            raise ValueError(f'{out} is {what} (it holds {found[0]}); writing there would replace its files: give a '
                             f'new or empty folder')
        if names and not force:
            raise ValueError(f'{out} is not empty (it holds {", ".join(names[:3])}{", ..." if len(names) > 3 else ""}); '
                             f'give a new or empty folder, or --force to replace the files it shares with the output')
    return out
