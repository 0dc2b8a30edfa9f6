"""Download stage: a dataset's files from its repository into ``<data_dir>/raw/<dataset>/``.

1. The manifest's ``repo`` and ``doi`` resolve to a record: the repository's file list
   with sizes and checksums (:mod:`pvlake.sources.repositories`).
2. What to fetch is chosen from that list alone: the label files the file filters select
   (with their shapefile sidecars), the archives to extract (``compression: "zip"``, or
   the ``compressed_archives`` named), or the one file a URL names.
3. Each file is fetched into the download cache ``<data_dir>/downloads/<dataset>/``,
   resumed if interrupted and checked against the repository's size and checksum; a
   cached file whose checksum still matches is reused without a download.
4. The raw folder is built aside: plain files linked from the cache, archives extracted
   safely (only the selected members, under ``<archive name without .zip>/``), so each
   label file is there exactly once and no archive is.
5. Once harmonize's own file finder agrees, ``MANIFEST.json`` (the provenance: size,
   SHA-256, source URL and retrieval time of every file) is written and the folder is
   swapped into place, so a complete ``raw/<dataset>/`` appears at once or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pandas as pd
import requests
from tqdm import tqdm

from .errors import DatasetError
from .io import write_json
from .layout import Layout
from .manifest import ARCHIVE_SUFFIXES, LABEL_FORMATS, DatasetSpec
from .sources import find_label_files
from .sources.archives import ArchiveError, extract_members, list_members, safe_relpath
from .sources.http import RepositoryError, fetch, hash_file, http_session, normalize_checksum
from .sources.labels import JUNK
from .sources.repositories import Endpoints, Record, RemoteFile, get_record, repository_of

DOWNLOAD_KEYS = ("repo", "doi", "compression", "compressed_archives", "file_filters", "label_fmt", "max_mb")
"""Manifest fields that decide what is downloaded (their hash is the rule's fingerprint)."""

COMPRESSIONS = (None, "zip")

SHAPEFILE_SIDECARS = (".dbf", ".shx", ".prj", ".cpg")
"""Files a shapefile is read with (attributes, index, CRS, encoding)."""

LFS_POINTER = b"version https://git-lfs.github.com/spec/"

CACHE_INDEX = ".fetched.json"
"""Per-dataset record of cached downloads (URL, checksum, SHA-256, retrieval time)."""


def download_fingerprint(spec: DatasetSpec) -> str:
    """Hash of the manifest fields that decide what is downloaded (not ``keep_cols`` etc.)."""
    entry = {key: spec.entry.get(key) for key in DOWNLOAD_KEYS}
    entry["file_filters"] = {k: v for k, v in (entry["file_filters"] or {}).items() if k != "description"}
    blob = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_downloadable(spec: DatasetSpec) -> None:
    """Raise :class:`DatasetError` when the entry cannot be downloaded."""
    spec.check()
    if spec.repo == "local":
        raise DatasetError(spec.name, None, "a 'local' dataset is read in place; there is nothing to download")
    if not spec.entry.get("doi"):
        raise DatasetError(spec.name, None, "no 'doi' (a DOI or URL) to download from")
    if spec.compression not in COMPRESSIONS:
        raise DatasetError(spec.name, None, f"compression {spec.compression!r} is not supported; use 'zip' or null")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_label_path(spec: DatasetSpec, relpath: str) -> bool:
    """True when harmonize would read the file at ``relpath`` (under the dataset root)."""
    return (
        not JUNK.search(relpath)
        and spec.filters.accepts(relpath)
        and relpath.lower().endswith(LABEL_FORMATS[spec.label_fmt])
    )


def with_sidecars(spec: DatasetSpec, candidates: list[str], chosen: list[str]) -> list[str]:
    """``chosen`` plus the shapefile sidecars among ``candidates``, in ``candidates`` order."""
    keep = set(chosen)
    if spec.label_fmt == "shp":
        stems = {c[: -len(".shp")] for c in chosen if c.lower().endswith(".shp")}
        # Every sidecar suffix is four characters, like ".shp".
        keep |= {c for c in candidates if c.lower().endswith(SHAPEFILE_SIDECARS) and c[:-4] in stems}
    return [c for c in candidates if c in keep]


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _filters_text(spec: DatasetSpec) -> str:
    f = spec.filters
    return f"include {list(f.include_patterns)}, exclude {list(f.exclude_patterns)}"


def select_downloads(spec: DatasetSpec, record: Record) -> list[RemoteFile]:
    """The files of ``record`` to fetch, in record order.

    A file URL's file is always fetched. Otherwise: the label files the filters select
    and their shapefile sidecars, plus the zip archives named in ``compressed_archives``
    (or, when none are named, every zip archive if ``compression`` is ``"zip"``).

    Raises
    ------
    DatasetError
        When a named archive is missing or nothing would be fetched.
    """
    if record.named_files:
        return list(record.files)
    names = [f.name for f in record.files]
    named = list(spec.entry.get("compressed_archives") or [])
    missing = [a for a in named if a not in {PurePosixPath(n).name for n in names}]
    if missing:
        raise DatasetError(spec.name, record.url, f"compressed_archives {missing} not in the record; files there: {_listing(names)}")

    def wanted_archive(name: str) -> bool:
        return PurePosixPath(name).name in named if named else spec.compression == "zip"

    archives = [n for n in names if is_archive(n) and wanted_archive(n)]
    labels = [n for n in names if not is_archive(n) and is_label_path(spec, n)]
    chosen = set(archives) | set(with_sidecars(spec, names, labels))
    if not chosen:
        raise DatasetError(
            spec.name, record.url,
            f"nothing to download: no {spec.label_fmt} file matches the file filters ({_filters_text(spec)}) "
            f"and no archive is to be extracted (compression {spec.compression!r}); files in the record: {_listing(names)}",
        )
    return [f for f in record.files if f.name in chosen]


def select_members(spec: DatasetSpec, prefix: str, members: list[str]) -> list[str]:
    """Archive members to extract: label files (as they will sit under ``prefix/``) and
    their shapefile sidecars."""
    rel = {f"{prefix}/{safe_relpath(m)}": m for m in members}
    paths = list(rel)
    chosen = with_sidecars(spec, paths, [p for p in paths if is_label_path(spec, p)])
    return [rel[p] for p in chosen]


def max_bytes(spec: DatasetSpec) -> int | None:
    """The entry's ``max_mb`` (largest file accepted, MiB as upstream) in bytes."""
    max_mb = spec.entry.get("max_mb")
    return None if max_mb is None else int(max_mb * 1024 * 1024)


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _load_index(cache_dir: Path) -> dict:
    path = cache_dir / CACHE_INDEX
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _reusable(remote: RemoteFile, cached: dict | None, path: Path) -> str | None:
    """SHA-256 of the cached copy when it still matches the repository's checksum."""
    if not (remote.checksum and cached and cached.get("checksum") == remote.checksum and path.is_file()):
        return None
    sha256, recomputed = hash_file(path, remote.checksum)
    return sha256 if recomputed == normalize_checksum(remote.checksum) else None


def _check_limits(spec: DatasetSpec, wanted: list[RemoteFile], cache_dir: Path, index: dict) -> None:
    limit = max_bytes(spec)
    too_big = [f"{f.name} ({f.size_bytes / 2**20:,.0f} MiB)" for f in wanted if limit and (f.size_bytes or 0) > limit]
    if too_big:
        raise DatasetError(spec.name, None, f"above max_mb {spec.entry['max_mb']}: {', '.join(too_big)}; raise max_mb to accept")
    needed = sum(f.size_bytes or 0 for f in wanted if f.name not in index)
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if needed > free:
        raise DatasetError(spec.name, str(cache_dir), f"needs {needed / 1e9:.2f} GB for downloads, {free / 1e9:.2f} GB free")


def fetch_to_cache(
    remote: RemoteFile, cache_dir: Path, index: dict, session: requests.Session,
    limit: int | None = None, progress: bool = True,
) -> dict:
    """Fetch one file into the cache (or reuse the cached copy) and return its record.

    Returns
    -------
    dict
        ``name``, ``url``, ``size_bytes``, ``checksum`` (the repository's, or None),
        ``sha256`` and ``retrieved_at`` (UTC, when the bytes were downloaded).
    """
    path = cache_dir / safe_relpath(remote.name)
    cached = index.get(remote.name)
    sha256 = _reusable(remote, cached, path)
    if sha256 is not None:
        return {**cached, "url": remote.url, "sha256": sha256}
    sha256 = fetch(session, remote.url, path, remote.size_bytes, remote.checksum, limit, progress=progress)
    return {
        "name": remote.name, "url": remote.url, "size_bytes": path.stat().st_size,
        "checksum": remote.checksum, "sha256": sha256, "retrieved_at": _utc_now(),
    }


def _check_not_lfs_pointer(spec: DatasetSpec, path: Path, url: str) -> None:
    if path.stat().st_size < 1024 and path.read_bytes().startswith(LFS_POINTER):
        raise DatasetError(spec.name, url, "is a Git LFS pointer, not the data; the repository keeps this file in LFS")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no second copy on disk when cache and raw share a filesystem
    except OSError:
        shutil.copy2(src, dst)


def build_raw(spec: DatasetSpec, fetched: list[dict], cache_dir: Path, dest: Path) -> tuple[list[dict], list[str]]:
    """Lay out the fetched files under ``dest``: plain files linked, archives extracted.

    Returns
    -------
    files : list of dict
        One provenance record per file written (``path``, ``size_bytes``, ``sha256``,
        ``source_url``, ``retrieved_at``, ``archive``, ``member``).
    seen : list of str
        Every name considered (record files and archive members), for error messages.
    """
    files, seen = [], []
    for entry in fetched:
        src = cache_dir / safe_relpath(entry["name"])
        common = {"source_url": entry["url"], "retrieved_at": entry["retrieved_at"]}
        if is_archive(entry["name"]):
            prefix = safe_relpath(entry["name"])[: -len(".zip")]
            members = list_members(src)
            seen.extend(f"{entry['name']}/{m}" for m in members)
            for e in extract_members(src, select_members(spec, prefix, members), dest / prefix):
                files.append({"path": f"{prefix}/{e.path}", "size_bytes": e.size_bytes, "sha256": e.sha256,
                              **common, "archive": entry["name"], "member": e.member})
        else:
            seen.append(entry["name"])
            _link_or_copy(src, dest / safe_relpath(entry["name"]))
            files.append({"path": safe_relpath(entry["name"]), "size_bytes": entry["size_bytes"],
                          "sha256": entry["sha256"], **common, "archive": None, "member": None})
    return sorted(files, key=lambda f: f["path"]), seen


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target`` with two renames (the old folder goes last)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _resolve(spec: DatasetSpec, session: requests.Session, endpoints: Endpoints) -> Record:
    try:
        return get_record(spec.repo, spec.entry["doi"], session, endpoints)
    except ValueError as exc:  # an identifier the repository's client cannot read
        raise DatasetError(spec.name, spec.entry["doi"], str(exc)) from exc


def download_dataset(
    spec: DatasetSpec,
    layout: Layout,
    endpoints: Endpoints = Endpoints(),
    session: requests.Session | None = None,
    progress: bool = True,
) -> dict:
    """Download, verify and lay out one dataset in ``layout.raw_dir(spec.name)``.

    Parameters
    ----------
    spec : DatasetSpec
        The dataset's manifest entry (``repo`` other than ``local``).
    layout : Layout
        Where the raw folder and the download cache are.
    endpoints : Endpoints
        Service base URLs (the real services by default).
    session : requests.Session, optional
        Defaults to :func:`~pvlake.sources.http.http_session` with the tokens found in
        the environment (``GITHUB_TOKEN``, ``ZENODO_TOKEN``, ``FIGSHARE_TOKEN``).
    progress : bool
        Show tqdm bars (files, and bytes of each download).

    Returns
    -------
    dict
        The provenance written to ``MANIFEST.json``.

    Raises
    ------
    DatasetError
        For anything that stops the dataset: an unreachable or failing service, a file
        that does not match its checksum, an unsafe archive, nothing to read.
    """
    check_downloadable(spec)
    session = session or http_session(endpoints.auth_headers())
    cache_dir = layout.download_cache(spec.name)
    raw = layout.raw_dir(spec.name)
    staging = raw.with_name(f".{raw.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record = _resolve(spec, session, endpoints)
        wanted = select_downloads(spec, record)
        index = _load_index(cache_dir)
        _check_limits(spec, wanted, cache_dir, index)
        fetched = []
        for remote in tqdm(wanted, desc=f"download {spec.name}", unit="file", disable=not progress):
            entry = fetch_to_cache(remote, cache_dir, index, session, max_bytes(spec), progress)
            _check_not_lfs_pointer(spec, cache_dir / safe_relpath(remote.name), remote.url)
            fetched.append(entry)
            index[remote.name] = entry
            write_json(index, cache_dir / CACHE_INDEX)
        staging.mkdir(parents=True)
        files, seen = build_raw(spec, fetched, cache_dir, staging)
        if not any(is_label_path(spec, f["path"]) for f in files):
            raise DatasetError(
                spec.name, record.url,
                f"no {spec.label_fmt} file matches the file filters ({_filters_text(spec)}) in what was "
                f"downloaded: {_listing(seen)}",
            )
        provenance = {
            "dataset": spec.name,
            "repo": repository_of(spec.repo, spec.entry["doi"]),
            "source": record.source,
            "record": {"url": record.url, "version": record.version, "title": record.title},
            "download_fingerprint": download_fingerprint(spec),
            "downloads": sorted(fetched, key=lambda e: e["name"]),
            "files": files,
            "label_files": [lf.source_file for lf in find_label_files(spec, staging)],
        }
        write_json(provenance, staging / layout.raw_manifest(spec.name).name)
        _replace_dir(staging, raw)
    except (RepositoryError, ArchiveError) as exc:
        raise DatasetError(spec.name, exc.where, exc.reason) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return provenance


def files_table(provenance: dict) -> pd.DataFrame:
    """One row per file in the raw folder: path, size, SHA-256, where it came from."""
    labels = set(provenance["label_files"])
    rows = [{
        "path": f["path"],
        "size_mb": round(f["size_bytes"] / 1e6, 3),
        "label_file": f["path"] in labels,
        "sha256": f["sha256"][:16] + "…",
        "from": f"{f['archive']} ({f['member']})" if f["archive"] else "direct",
        "retrieved_at": f["retrieved_at"],
    } for f in provenance["files"]]
    return pd.DataFrame(rows)


def downloads_table(provenance: dict) -> pd.DataFrame:
    """One row per file fetched from the repository, with how it was verified."""
    rows = [{
        "name": d["name"],
        "size_mb": round(d["size_bytes"] / 1e6, 3),
        "checked_against": f"{d['checksum'].split(':', 1)[0]} from the repository" if d["checksum"] else "none published",
        "url": d["url"],
        "retrieved_at": d["retrieved_at"],
    } for d in provenance["downloads"]]
    return pd.DataFrame(rows)
