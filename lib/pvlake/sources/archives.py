"""Safe extraction of downloaded zip and tar (``.tar.gz``, ``.tgz``) archives.

Archives come from third parties, so nothing in one is trusted: every member name must
be a plain relative path (no absolute paths, drive letters or ``..``: "zip slip"),
symbolic and hard links (and devices) are never files, an implausible compression ratio
(a "zip bomb": per member in a zip, over the whole stream in a compressed tar) is
refused, the uncompressed total must fit on the disk, and each member is checked as it
is written (CRC in a zip, length and gzip CRC in a tar). Only the members asked for are
extracted; the archive's kind comes from its content, else from its name.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

MAX_COMPRESSION_RATIO = 500
"""Largest uncompressed/compressed size ratio accepted: per member in a zip, over all
members in a tar (compressed as one stream). Real label files compress 3-50x
(GeoPackage, shapefile, GeoJSON); a deflated run of zeros, the stuff of zip bombs,
reaches about 1000x."""

CHUNK_BYTES = 1 << 20

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar.gz", ".tgz")
ARCHIVE_SUFFIXES = ZIP_SUFFIXES + TAR_SUFFIXES
"""Names of the archives the download stage extracts."""


class ArchiveError(Exception):
    """An archive that cannot be extracted safely.

    Parameters
    ----------
    where : str
        The archive, or ``<archive>/<member>``.
    reason : str
        What is wrong.
    """

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


def safe_relpath(name: str) -> str:
    """``name`` as a normalised relative POSIX path, or ValueError when it could escape.

    Backslashes (zips written on Windows) count as separators; empty and ``.``
    components are dropped.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or not parts or ".." in parts or ":" in parts[0]:
        raise ValueError(f"unsafe path {name!r}")
    return "/".join(parts)


@dataclass(frozen=True)
class Extracted:
    """One extracted member.

    Attributes
    ----------
    path : str
        Relative POSIX path under the extraction folder.
    member : str
        Member name in the archive.
    size_bytes : int
    sha256 : str
    """

    path: str
    member: str
    size_bytes: int
    sha256: str


def archive_stem(name: str) -> str:
    """``name`` without its archive suffix (``a/b.tar.gz`` -> ``a/b``)."""
    suffix = next((x for x in ARCHIVE_SUFFIXES if name.lower().endswith(x)), "")
    return name[: len(name) - len(suffix)]


def detect_archive(path: str | Path) -> str | None:
    """``"zip"`` or ``"tar"`` (plain, gzip, bzip2 or xz) from the file's content, else None."""
    if zipfile.is_zipfile(path):
        return "zip"
    return "tar" if tarfile.is_tarfile(path) else None


@dataclass(frozen=True)
class _Entry:
    """One archive entry: ``packed`` is its compressed size in a zip (None in a tar,
    which is compressed as a whole); ``is_file`` is False for folders, links, devices."""

    name: str
    size: int
    packed: int | None
    is_file: bool
    info: zipfile.ZipInfo | tarfile.TarInfo


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _zip_entries(zf: zipfile.ZipFile) -> list[_Entry]:
    return [_Entry(i.filename, i.file_size, i.compress_size, not i.is_dir() and not _is_symlink(i), i)
            for i in zf.infolist()]


def _tar_entries(tf: tarfile.TarFile, archive: Path) -> list[_Entry]:
    # Each header is read by decompressing everything before it, so the ratio is checked
    # as the listing goes: a decompression bomb is refused before it is inflated.
    packed = max(archive.stat().st_size, 1)
    entries, total = [], 0
    for info in tf:
        total += info.size
        if total > MAX_COMPRESSION_RATIO * packed:
            raise ArchiveError(
                archive.name, f"holds over {total:,} bytes from {packed:,} compressed (ratio above "
                f"{MAX_COMPRESSION_RATIO}): refused as a possible decompression bomb",
            )
        entries.append(_Entry(info.name, info.size, None, info.isreg(), info))
    return entries


@contextmanager
def _open(archive: Path) -> Iterator[tuple[list[_Entry], Callable[[_Entry], IO[bytes]]]]:
    """The archive's entries and a function opening one of them for reading.

    The kind comes from the content; an unreadable file is read as its name says, so the
    error is the reader's own.
    """
    kind = detect_archive(archive) or ("tar" if archive.name.lower().endswith(TAR_SUFFIXES) else "zip")
    with ExitStack() as stack:
        try:
            if kind == "zip":
                zf = stack.enter_context(zipfile.ZipFile(archive))
                entries, opener = _zip_entries(zf), lambda e: zf.open(e.info)
            else:
                tf = stack.enter_context(tarfile.open(archive))
                entries, opener = _tar_entries(tf, archive), lambda e: tf.extractfile(e.info)
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
            raise ArchiveError(archive.name, f"not a readable {kind} archive ({exc})") from exc
        yield entries, opener


def _checked(archive: Path, entries: list[_Entry]) -> list[_Entry]:
    """The regular files among ``entries``, once every name is known safe and unique."""
    files, seen = [], set()
    for entry in entries:
        try:
            rel = safe_relpath(entry.name)
        except ValueError as exc:
            raise ArchiveError(archive.name, f"member {entry.name!r} has an {exc}; the archive is refused") from exc
        if rel in seen:
            raise ArchiveError(archive.name, f"member {rel!r} appears twice")
        seen.add(rel)
        if entry.is_file:
            files.append(entry)
    return files


def list_members(archive: str | Path) -> list[str]:
    """Names of the regular files in a zip or tar archive, in archive order.

    Raises
    ------
    ArchiveError
        When the archive is unreadable, a member name is unsafe, or a name repeats.
    """
    archive = Path(archive)
    with _open(archive) as (entries, _):
        return [e.name for e in _checked(archive, entries)]


def _check_sizes(archive: Path, entries: list[_Entry], dest: Path) -> None:
    for entry in entries:
        if entry.packed is not None and entry.size > MAX_COMPRESSION_RATIO * max(entry.packed, 1):
            raise ArchiveError(
                f"{archive.name}/{entry.name}",
                f"claims {entry.size:,} bytes from {entry.packed:,} compressed "
                f"(ratio above {MAX_COMPRESSION_RATIO}): refused as a possible zip bomb",
            )
    needed = sum(e.size for e in entries)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise ArchiveError(archive.name, f"needs {needed / 1e9:.2f} GB to extract, {free / 1e9:.2f} GB free")


def _copy_member(src: IO[bytes], target: Path, size: int, where: str) -> str:
    """Write ``src`` to ``target``; return its SHA-256. A member shorter than its header says
    (a truncated tar) is refused."""
    sha256, written = hashlib.sha256(), 0
    with open(target, "wb") as dst:
        for block in iter(lambda: src.read(CHUNK_BYTES), b""):
            sha256.update(block)
            dst.write(block)
            written += len(block)
    if written != size:
        raise ArchiveError(where, f"holds {written:,} bytes but its header says {size:,}: the archive is truncated")
    return sha256.hexdigest()


def extract_members(archive: str | Path, members: list[str], dest: str | Path) -> list[Extracted]:
    """Extract the named members of ``archive`` under ``dest``, safely.

    Parameters
    ----------
    archive : str or Path
        The zip or tar file (plain or compressed).
    members : list of str
        Member names as :func:`list_members` returns them.
    dest : str or Path
        Folder the members are written under (created), at their relative paths.

    Returns
    -------
    list of Extracted
        In the order of ``members``.

    Raises
    ------
    ArchiveError
        For an unsafe name, a likely zip bomb, too little disk space, a CRC error or a
        truncated member, an encrypted member or an unsupported compression method.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    out = []
    with _open(archive) as (entries, open_entry):
        by_name = {e.name: e for e in _checked(archive, entries)}
        missing = [m for m in members if m not in by_name]
        if missing:
            raise ArchiveError(archive.name, f"has no regular file {missing[0]!r}")
        chosen = [by_name[m] for m in members]
        _check_sizes(archive, chosen, dest)
        for entry in chosen:
            where = f"{archive.name}/{entry.name}"
            target = dest / safe_relpath(entry.name)
            if not target.resolve().is_relative_to(root):
                raise ArchiveError(where, "would be written outside the extraction folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open_entry(entry) as src:
                    sha256 = _copy_member(src, target, entry.size, where)
            except NotImplementedError as exc:
                raise ArchiveError(
                    where, f"uses a compression method Python's zipfile cannot read ({exc}); "
                    "Deflate64 archives extract with unzip or 7-Zip",
                ) from exc
            except (zipfile.BadZipFile, tarfile.TarError, zlib.error, RuntimeError, EOFError, OSError) as exc:
                # BadZipFile: CRC or size mismatch; RuntimeError: an encrypted member;
                # TarError, EOFError, OSError: a truncated or corrupt (gzip CRC) tar stream.
                raise ArchiveError(where, f"cannot be extracted ({type(exc).__name__}: {exc})") from exc
            out.append(Extracted(safe_relpath(entry.name), entry.name, target.stat().st_size, sha256))
    return out
