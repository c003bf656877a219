"""Where a command may write, and what it may delete: the one ownership rule of every tool.

- A folder output is written only if this toolkit created it, or it carries our marker
  (``.fer-edge-owner.json``), or it is empty. The marker is a ledger: the files our commands wrote
  there. A command replaces or deletes only files in that ledger; anything else in the folder is
  never touched.
- A folder an earlier version wrote has no marker. It is adopted when it holds that command's own
  manifest (an export's ``kind: artifacts``, a run's ``kind: run``); the ledger then lists just the
  files that manifest and the command's reports name, so files a user added are kept.
- A file output (``--json``, ``--annotate``, ...) that exists is replaced only if a ledger beside it
  lists it, or with ``--overwrite``.
- Refused outright, one line and exit 2: the filesystem root, the home folder, an output that is or
  contains the command's input (data set, model, video), and one inside a data set (it would change
  the data). Inside a model's folder is allowed: the demo keeps its benchmark beside the export.

Staging folders (hidden, named by the writing process's pid) carry the marker too, so recovery after
a crash removes only folders we made.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

MARKER = ".fer-edge-owner.json"
SCHEMA = 1


class OutputError(ValueError):
    """An output the command must not write: one line, exit 2."""


def _real(p) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p)))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_target(path, inputs: Iterable = (), flag: str = "--out", data: Iterable = ()) -> Path:
    """Refuse the root, the home folder, an output that is or contains an input or a data set, and one
    inside a data set."""
    if path is None or str(path).strip() == "":
        raise OutputError(f"{flag} is empty: name a file or folder to write")
    p = _real(path)
    if p == Path(p.anchor) or p == _real(Path.home()):
        raise OutputError(f"{flag} {path} is {'the filesystem root' if p == Path(p.anchor) else 'your home folder'}: "
                          "name a folder of its own")
    data = [d for d in data if d is not None]
    for given in [*inputs, *data]:
        if given is None:
            continue
        src = _real(given)
        if _inside(src, p):
            what = "is" if src == p else "contains"
            raise OutputError(f"{flag} {path} {what} this command's input {given}: choose another output")
    for given in data:
        if _inside(p, _real(given)):
            raise OutputError(f"{flag} {path} is inside the input folder {given}: choose another output")
    return p


def model_files(folder) -> list[Path]:
    """A model folder as an input: the folder, its manifest and every file the manifest names (so an
    output may sit beside them, never replace one)."""
    if folder is None:
        return []
    folder = Path(folder)
    if folder.is_file():  # a model.keras or manifest.json given directly
        folder = folder.parent
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return [folder]
    names = ["manifest.json", m.get("model_file") or "model.keras"] if isinstance(m, dict) else []
    arts = m.get("artifacts") if isinstance(m, dict) else None
    if isinstance(arts, dict):
        names += [a["file"] for a in arts.values() if isinstance(a, dict) and isinstance(a.get("file"), str)]
    return [folder, *(folder / n for n in names)]


_HELD: set[str] = set()  # folders this process holds exclusively (exclusive()): their ledger is ours to edit


@contextmanager
def _locked(folder: Path):
    if str(_real(folder)) in _HELD:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # several commands may record into one folder (make demo)
        yield
    finally:
        os.close(fd)


def held_folders() -> set[str]:
    return set(_HELD)


@contextmanager
def exclusive(folder, what: str):
    """Hold ``folder`` for one writer from start to commit (an export): a second one is refused at
    once instead of interleaving its commit and prune with ours (the live manifest would then name
    files the other pruned). Other commands recording into the folder wait until it is released."""
    key = str(_real(folder))
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"another {what} is writing into {folder}: wait for it to finish") from None
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        os.close(fd)


def _plain(name) -> bool:
    """A ledger entry is a plain name in its folder: never a path out of it (a forged '../x', '/etc')."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def read_ledger(folder) -> dict | None:
    """The marker's content (entries that are not plain names dropped), or None where there is none."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    data["files"] = [n for n in data["files"] if _plain(n)]
    writers = data.get("writers")
    data["writers"] = {k: v for k, v in writers.items() if _plain(k) and isinstance(v, str)} \
        if isinstance(writers, dict) else {}
    return data


def _write_ledger(folder: Path, owner: str, files: Iterable[str], writers: dict | None = None) -> None:
    from .manifest import atomic_write_json  # the same atomic writer as every manifest
    files = sorted(set(files))
    atomic_write_json(folder / MARKER, {"schema": SCHEMA, "owner": owner, "files": files,
                                        "writers": {k: v for k, v in sorted((writers or {}).items()) if k in files},
                                        "note": "written by fer-edge: the files its commands wrote here "
                                                "(and which command wrote each file output); they replace "
                                                "or delete nothing else"})


class OwnedDir:
    """A folder we may write into; ``record`` what is written, ``remove`` only what was recorded."""

    def __init__(self, path: Path, owner: str):
        self.path, self.owner = Path(path), owner

    @classmethod
    def claim(cls, path, owner: str, *, inputs: Iterable = (), data: Iterable = (), flag: str = "--out",
              legacy: Iterable[str] | None = None, accept: Iterable[str] = ()) -> OwnedDir:
        """Create ``path`` or take it over under the rules above. ``legacy``: the files to own in a
        folder an earlier version wrote (None: this folder is not one). ``accept``: other owners whose
        folders this command may also write into (a benchmark into an export's folder)."""
        p = check_target(path, inputs, flag, data)
        if p.exists() and not p.is_dir():
            raise OutputError(f"{flag} {path} is a file, not a folder")
        if not p.exists():
            p.mkdir(parents=True)
            _write_ledger(p, owner, [])
            return cls(p, owner)
        with _locked(p):
            ledger = read_ledger(p)
            if ledger is not None:
                if ledger.get("owner") not in (owner, *accept):
                    raise OutputError(f"{flag} {path} holds the output of '{ledger.get('owner')}', not of "
                                      f"'{owner}': choose another folder")
                return cls(p, ledger["owner"])
            present = [c.name for c in p.iterdir()]
            if not present:
                _write_ledger(p, owner, [])
            elif legacy is not None:
                _write_ledger(p, owner, [f for f in legacy if (p / f).exists()])
            else:
                shown = ", ".join(sorted(present)[:3]) + (", ..." if len(present) > 3 else "")
                raise OutputError(f"{flag} {path} exists and was not written by this toolkit (it holds {shown}): "
                                  "choose a new or empty folder")
        return cls(p, owner)

    def owned(self) -> set[str]:
        ledger = read_ledger(self.path)
        return set(ledger["files"]) if ledger else set()

    def owns(self, name: str) -> bool:
        return name in self.owned()

    def record(self, *names: str, writer: str | None = None) -> None:
        """List ``names`` as ours; ``writer``: the command that wrote them, the only one that may
        replace them without --overwrite."""
        with _locked(self.path):
            ledger = read_ledger(self.path) or {"owner": self.owner, "files": [], "writers": {}}
            writers = {**ledger["writers"], **({n: writer for n in names} if writer else {})}
            _write_ledger(self.path, ledger.get("owner", self.owner), [*ledger["files"], *names], writers)

    def forget(self, *names: str) -> None:
        with _locked(self.path):
            ledger = read_ledger(self.path) or {"owner": self.owner, "files": [], "writers": {}}
            _write_ledger(self.path, ledger.get("owner", self.owner), set(ledger["files"]) - set(names),
                          ledger["writers"])

    def remove(self, name: str) -> bool:
        """Delete ``name`` if we wrote it (file or folder); -> whether it went."""
        if not self.owns(name):
            return False
        target = self.path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        self.forget(name)
        return True

    def foreign(self) -> list[str]:
        """Entries in the folder that no command of ours wrote (the marker aside)."""
        mine = self.owned() | {MARKER}
        return sorted(c.name for c in self.path.iterdir() if c.name not in mine)


def claim_file(path, *, writer: str, inputs: Iterable = (), data: Iterable = (), flag: str,
               overwrite: bool = False) -> Path:
    """Check a file output before anything is opened: refused if it is an input (or holds one), the
    root or home, or an existing file that ``writer`` (this command) did not write, without
    ``overwrite``: another command's output (an export's report, a run's model) is not this one's."""
    p = check_target(path, inputs, flag, data)
    if p.is_dir():
        raise OutputError(f"{flag} {path} is a folder: name a file")
    if p.exists() and not overwrite:
        ledger = read_ledger(p.parent)
        by = ledger["writers"].get(p.name) if ledger else None
        if by != writer:
            theirs = f" (it is {by}'s)" if by else ""
            raise OutputError(f"{flag} {path} exists and was not written by this command{theirs}: "
                              "pass --overwrite to replace it, or name another file")
    return p


def record_file(path, writer: str) -> None:
    """After writing a file: list it, and the command that wrote it, in the ledger of its folder, if that
    folder has one (a user's own folder gets no marker, so a second run there needs --overwrite)."""
    p = _real(path)
    if read_ledger(p.parent) is not None:
        OwnedDir(p.parent, "").record(p.name, writer=writer)


# ---------------------------------------------------------------- staging
def staging_dir(parent: Path, name: str) -> Path:
    """A hidden working folder ``parent/name`` carrying the marker (owner 'staging'), created fresh."""
    d = Path(parent) / name
    d.mkdir()
    _write_ledger(d, "staging", [])
    return d


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_staging(parent: Path, pattern: str) -> list[Path]:
    """Staging folders matching ``pattern`` (name ending in -PID) whose process is gone and which carry
    our marker: only these may be recovered or removed."""
    out = []
    for d in Path(parent).glob(pattern):
        try:
            pid = int(d.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if d.is_dir() and not pid_alive(pid) and read_ledger(d) is not None:
            out.append(d)
    return out


def remove_staging(d: Path) -> None:
    """Remove a staging folder we made (it carries the marker); anything else is left alone."""
    if d.is_dir() and read_ledger(d) is not None:
        shutil.rmtree(d, ignore_errors=True)


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def seal(folder: Path, owner: str) -> None:
    """A finished staging folder: its ledger lists every entry in it, under its final owner."""
    _write_ledger(Path(folder), owner, [c.name for c in Path(folder).iterdir() if c.name != MARKER])


def _sealed(d: Path) -> bool:
    ledger = read_ledger(d)
    return ledger is not None and ledger.get("owner") != "staging"


def recover_swap(out: Path, tag: str) -> None:
    """Leftovers of writers that died: a swap killed between its two renames left no folder, the
    finished new one (promoted) and the old one (restored if the new one is not whole). Other
    staging folders of dead writers are removed; a live writer's folder is left alone."""
    work = dead_staging(out.parent, f".{out.name}.{tag}-*")
    replaced = dead_staging(out.parent, f".{out.name}.replaced-*")
    if not out.exists():
        whole = [p for p in work if _sealed(p)]
        if whole:
            os.replace(whole[0], out)
        elif replaced:
            os.replace(replaced[0], out)
    for p in work + replaced:
        if p.exists():
            remove_staging(p)


@contextmanager
def replaced_whole(out, owner: str, *, inputs: Iterable = (), data: Iterable = (), flag: str = "--out",
                   tag: str = "staging",
                   legacy: Iterable[str] | None = None, log=print):
    """Write a folder output whole: yield a hidden staging sibling; on success it replaces ``out``, whose
    entries must all be ours (checked before the work starts and again at the swap). A failure or an
    interrupt leaves ``out`` as it was."""
    out = check_target(out, inputs, flag, data)
    if out.exists():
        mine = OwnedDir.claim(out, owner, inputs=inputs, data=data, flag=flag, legacy=legacy)
        if foreign := mine.foreign():
            raise OutputError(f"{flag} {out} holds files '{owner}' did not write ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}): move them or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_swap(out, tag)
    work = staging_dir(out.parent, f".{out.name}.{tag}-{os.getpid()}")
    try:
        yield work
    except BaseException:
        remove_staging(work)
        raise
    seal(work, owner)
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        if foreign := OwnedDir(out, owner).foreign():  # added while we worked: keep the old folder, visibly
            kept = out.with_name(f"{out.name}.previous-{stamp()}")
            os.replace(out, kept)
            log(f"warning: {out} gained files during the run ({', '.join(foreign[:3])}); the previous folder "
                f"is kept whole as {kept}")
        else:
            os.replace(out, old)
    os.replace(work, out)
    remove_staging(old)


OVERWRITE_HELP = "replace output files that exist and that no command of this toolkit wrote"


def add_overwrite_flag(parser) -> None:
    """The same --overwrite, with the same words, on every command that writes files."""
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
