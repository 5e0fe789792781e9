"""Paths that are local files or objects in cloud storage (`gs://bucket/...`), one set of helpers.

A workdir, its `config.json` and `metrics.jsonl`, checkpoints, shard globs, sweep roots and
export directories may all live on `gs://`, where every host of a pod sees the same objects.
Remote paths go through `etils.epath` (which reaches GCS through `gcsfs`: `pip install -e
".[gcs]"`); local ones through the standard library, so behaviour on a local disk does not
change. Orbax and array_record open `gs://` paths themselves: hand them `resolve(path)`, which
makes local paths absolute and leaves URLs alone.

Object stores have no append and no rename: `write_text` replaces a whole object in one upload
(atomic on GCS), and a local write goes through a temporary file and `os.replace` (atomic on a
POSIX file system), so a reader never sees half a file.
"""

from __future__ import annotations

import glob as glob_lib
import os
import shutil
import tempfile

_GLOB_CHARS = "*?["


def is_remote(path: str) -> bool:
    """A URL such as `gs://bucket/run` (anything with a scheme) rather than a local path."""
    return "://" in str(path)


def resolve(path: str) -> str:
    """An absolute local path (`~` expanded), or the URL unchanged."""
    path = str(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
    if is_remote(path):
        return "/".join([str(path).rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(path, *parts)


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def _remote(path: str):
    try:
        from etils import epath
    except ImportError as e:  # etils comes with orbax; reaching GCS also needs gcsfs
        raise ImportError(f"{path}: cloud paths need etils and gcsfs: pip install -e '.[gcs]'") from e
    return epath.Path(path)


def exists(path: str) -> bool:
    return _remote(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """A local directory, or a prefix that holds objects."""
    return _remote(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return _remote(path).is_file() if is_remote(path) else os.path.isfile(path)


def makedirs(path: str) -> None:
    """A directory (object stores have none: a no-op there)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names directly under `path` (empty if there is nothing there)."""
    if is_remote(path):
        p = _remote(path)
        return sorted(c.name for c in p.iterdir()) if p.exists() else []
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def glob(pattern: str) -> list[str]:
    """Files matching a shell pattern; on an object store the pattern may use `*`, `?` and `[...]`
    in its last components (the part before the first wildcard is the prefix listed)."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(os.path.expanduser(pattern)))
    first = min((pattern.index(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))
    base = pattern[:first].rsplit("/", 1)[0]
    rest = pattern[len(base) + 1:]
    if not rest:
        return [pattern] if exists(pattern) else []
    return sorted(str(p) for p in _remote(base).glob(rest))


def read_text(path: str) -> str:
    if is_remote(path):
        return _remote(path).read_text()
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        return _remote(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Writes the whole file at once: a reader sees the old content or the new, never a part."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    if is_remote(path):
        _remote(path).write_bytes(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove(path: str) -> None:
    if is_remote(path):
        _remote(path).unlink()
    else:
        os.remove(path)


def copy(src: str, dst: str) -> None:
    """Copies one file between any two places (local or remote)."""
    if not is_remote(src) and not is_remote(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        shutil.copyfile(src, dst)
        return
    if is_remote(dst):
        _remote(dst).write_bytes(read_bytes(src))
    else:
        write_bytes(dst, read_bytes(src))


def copy_tree(src: str, dst: str) -> list[str]:
    """Copies the files of a local directory tree to `dst` (local or remote); returns the copies."""
    out = []
    for folder, _, names in os.walk(src):
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(folder, name), src).replace(os.sep, "/")
            out.append(join(dst, *rel.split("/")))
            copy(os.path.join(folder, name), out[-1])
    return out
