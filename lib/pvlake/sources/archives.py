"""Safe extraction of downloaded zip archives.

Archives come from third parties, so nothing in one is trusted: every member name must
be a plain relative path (no absolute paths, drive letters or ``..``: "zip slip"),
symbolic links are never files, a member that claims an implausible compression ratio
(a "zip bomb") is refused, the uncompressed total must fit on the disk, and each
member's CRC is checked as it is written. Only the members asked for are extracted.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_COMPRESSION_RATIO = 500
"""Largest uncompressed/compressed size ratio accepted for a member. Real label files
compress 3-50x (GeoPackage, shapefile, GeoJSON); a deflated run of zeros, the stuff of
zip bombs, reaches about 1000x."""

CHUNK_BYTES = 1 << 20


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


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def list_members(archive: str | Path) -> list[str]:
    """Names of the regular files in a zip archive, in archive order.

    Raises
    ------
    ArchiveError
        When the archive is unreadable, a member name is unsafe, or a name repeats.
    """
    archive = Path(archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(archive.name, f"not a readable zip archive ({exc})") from exc
    names, seen = [], set()
    for info in infos:
        try:
            rel = safe_relpath(info.filename)
        except ValueError as exc:
            raise ArchiveError(archive.name, f"member {info.filename!r} has an {exc}; the archive is refused") from exc
        if rel in seen:
            raise ArchiveError(archive.name, f"member {rel!r} appears twice")
        seen.add(rel)
        if not info.is_dir() and not _is_symlink(info):
            names.append(info.filename)
    return names


def _check_sizes(archive: Path, infos: list[zipfile.ZipInfo], dest: Path) -> None:
    for info in infos:
        if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise ArchiveError(
                f"{archive.name}/{info.filename}",
                f"claims {info.file_size:,} bytes from {info.compress_size:,} compressed "
                f"(ratio above {MAX_COMPRESSION_RATIO}): refused as a possible zip bomb",
            )
    needed = sum(i.file_size for i in infos)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise ArchiveError(archive.name, f"needs {needed / 1e9:.2f} GB to extract, {free / 1e9:.2f} GB free")


def extract_members(archive: str | Path, members: list[str], dest: str | Path) -> list[Extracted]:
    """Extract the named members of ``archive`` under ``dest``, safely.

    Parameters
    ----------
    archive : str or Path
        The zip file.
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
        For an unsafe name, a likely zip bomb, too little disk space, a CRC error, an
        encrypted member or an unsupported compression method.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    out = []
    with zipfile.ZipFile(archive) as zf:
        infos = [zf.getinfo(m) for m in members]
        _check_sizes(archive, infos, dest)
        for info in infos:
            where = f"{archive.name}/{info.filename}"
            try:
                rel = safe_relpath(info.filename)
            except ValueError as exc:
                raise ArchiveError(where, str(exc)) from exc
            target = dest / rel
            if not target.resolve().is_relative_to(root):
                raise ArchiveError(where, "would be written outside the extraction folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            sha256 = hashlib.sha256()
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    for block in iter(lambda: src.read(CHUNK_BYTES), b""):
                        sha256.update(block)
                        dst.write(block)
            except NotImplementedError as exc:
                raise ArchiveError(
                    where, f"uses a compression method Python's zipfile cannot read ({exc}); "
                    "Deflate64 archives extract with unzip or 7-Zip",
                ) from exc
            except (zipfile.BadZipFile, RuntimeError, EOFError) as exc:
                # BadZipFile: CRC or size mismatch; RuntimeError: an encrypted member.
                raise ArchiveError(where, f"cannot be extracted ({type(exc).__name__}: {exc})") from exc
            out.append(Extracted(rel, info.filename, target.stat().st_size, sha256.hexdigest()))
    return out
