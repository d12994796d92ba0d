"""Output folders written safely: checked before anything runs, locked, staged, published whole.

A run never writes into its output folder ``OUT`` piece by piece. :class:`OutputFolder`

1. checks ``OUT`` up front (:func:`check_out`): an existing file, or a place where nothing can
   be created, is a one-line :class:`~fedsim.errors.ScenarioError` on ``--out``;
2. locks it: ``.OUT.lock`` next to it, held with ``flock`` for the whole run, so a second
   writer of the same folder stops at once with a one-line error (the lock dies with its
   process, so a killed run leaves no stale lock);
3. hands out a fresh staging folder ``.OUT.partial-XXXX`` next to ``OUT``, where the run
   writes everything;
4. publishes it by renames when the run has written it all: ``OUT`` is replaced whole, its
   old content removed. A run that fails, is interrupted (Ctrl-C) or killed leaves ``OUT``
   as it was (a killed run leaves a hidden staging folder, removed by the next run into ``OUT``).

The one file a run may write into ``OUT`` itself is ``checkpoint.pt`` (``--checkpoint-every``),
so that a killed training run can be resumed from ``OUT``.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from fedsim.errors import ScenarioError
from fedsim.inputs import one_line

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

__all__ = ["RUN_FILES", "OutputFolder", "check_out", "disk_error"]

PARTIAL = ".partial-"
OLD = ".old-"


def _shown(path: Path) -> str:
    return one_line(str(path))


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path):
        path = path.parent
    return path


RUN_FILES = frozenset({"summary.json", "clients.csv", "staleness.png", "time_breakdown.png", "time_breakdown.csv",
                       "trace.parquet", "training.csv", "training.png", "model.pt", "checkpoint.pt"})
"""What a run folder may hold: a folder with anything else is never replaced."""


def check_out(out: str | Path, where: str = "--out", *, replace: bool = False) -> Path:
    """``out`` as a Path, if a folder can be written there (ScenarioError(``where``) otherwise).

    It must be an existing folder or not exist; its nearest existing ancestor must be a folder
    this process may write in. With ``replace`` (a run folder, replaced whole when the run
    succeeds) an existing ``out`` must be empty or hold run files only (:data:`RUN_FILES`),
    so that ``--out .`` or a folder of other work is never wiped.
    """
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise ScenarioError(where, f"{_shown(out)} exists and is not a folder; give a folder to write into")
    if replace and out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
        if foreign:
            shown = ", ".join(one_line(name) for name in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ScenarioError(where, f"{_shown(out)} holds files that are not a fedsim run ({shown}); a run "
                                "replaces its folder whole: give a new or empty folder, or a run folder")
    ancestor = _nearest_existing(out.parent if out.name else out)
    if not ancestor.is_dir():
        raise ScenarioError(where, f"cannot create {_shown(out)}: {_shown(ancestor)} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ScenarioError(where, f"cannot write in {_shown(ancestor)} (permission denied)")
    return out


def disk_error(exc: OSError, out: Path, where: str = "--out") -> ScenarioError:
    """A failed write to the output folder as a one-line error (a full disk, no permission)."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}.get(exc.errno or 0)
    return ScenarioError(where, f"cannot write {_shown(out)}: {reason or exc.strerror or exc}; nothing was written")


class OutputFolder:
    """The output folder of one run (see the module docstring)::

        with OutputFolder(out) as folder:
            ... write files into folder.staging ...
            folder.publish()

    Leaving the block without :meth:`publish` (an error, Ctrl-C) removes the staging folder
    and leaves ``out`` unchanged. :meth:`ensure_out` creates ``out`` for files that must be
    written there during the run (checkpoints); :meth:`publish` carries such files over.
    """

    def __init__(self, out: str | Path, where: str = "--out") -> None:
        self.out = Path(out)
        self.where = where
        self.staging = Path()
        self.published = False
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def _lock_path(self) -> Path:
        return self.out.parent / f".{self.out.name}.lock"

    def __enter__(self) -> OutputFolder:
        self.out = Path(os.path.realpath(check_out(self.out, self.where, replace=True)))
        try:
            self._created = _make_parents(self.out.parent)
            self._lock()
            self._remove_stale()
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}{PARTIAL}", dir=self.out.parent))
            mask = os.umask(0)
            os.umask(mask)
            self.staging.chmod(0o777 & ~mask)  # a published folder has ordinary permissions
        except OSError as exc:
            self._release()
            raise disk_error(exc, self.out, self.where) from None
        except BaseException:
            self._release()
            raise
        return self

    def ensure_out(self) -> Path:
        """Create ``out`` (if missing) for files written there while the run goes."""
        if not self.out.exists():
            self.out.mkdir()
            self._created.append(self.out)
        return self.out

    def publish(self, carry: tuple[str, ...] = ()) -> Path:
        """Replace ``out`` by the staging folder, with ``carry`` (names of files the run wrote
        into ``out`` itself, such as ``checkpoint.pt``) moved into it first."""
        try:
            for name in carry:
                if (self.out / name).is_file():
                    os.replace(self.out / name, self.staging / name)
            if self.out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}{OLD}", dir=self.out.parent))
                os.rename(self.out, old / "run")
                os.rename(self.staging, self.out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.staging, self.out)
        except OSError as exc:
            raise disk_error(exc, self.out, self.where) from None
        self.published = True
        return self.out

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.published and self.staging != Path():
            shutil.rmtree(self.staging, ignore_errors=True)
        self._release()

    # -----------------------------------------------------------------------------------

    def _lock(self) -> None:
        if fcntl is None:
            return
        path = self._lock_path
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                pid = f" (process {holder})" if holder.isdigit() else ""
                raise ScenarioError(self.where, f"{_shown(self.out)} is being written by another fedsim run{pid}; "
                                    "wait for it to end or choose another folder") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its previous holder removed while we waited
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _remove_stale(self) -> None:
        """Staging and old folders of runs into ``out`` that were killed (we hold the lock)."""
        for prefix in (PARTIAL, OLD):
            for stale in self.out.parent.glob(f".{_glob_escape(self.out.name)}{prefix}*"):
                shutil.rmtree(stale, ignore_errors=True)

    def _release(self) -> None:
        if self._fd is not None:
            try:
                self._lock_path.unlink(missing_ok=True)
            except OSError:
                pass
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        if not self.published:
            for folder in reversed(self._created):
                try:
                    folder.rmdir()  # only if still empty
                except OSError:
                    break
            self._created = []


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
