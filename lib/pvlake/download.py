"""Download stage: a dataset's files from its repository into ``<data_dir>/raw/<dataset>/``.

1. The manifest's ``repo`` and ``doi`` resolve to a record: the repository's file list
   with sizes and checksums (:mod:`pvlake.sources.repositories`).
2. What to fetch is chosen from that list alone: the label files the file filters select
   (with their shapefile sidecars), the archives to extract (``compression: "zip"``, or
   the ``compressed_archives`` named), or the one file a URL names.
3. The files are fetched into the download cache ``<data_dir>/downloads/<dataset>/``,
   a few at a time (:class:`DownloadSettings`), resumed if interrupted and checked against
   the repository's size and checksum; a cached file whose checksum still matches is
   reused without a download. Progress (files and bytes) is printed as plain lines, which
   read the same in the executed notebook and in the log.
4. The raw folder is built aside: plain files linked from the cache, archives (zip or
   tar.gz) extracted safely (only the selected members, under the archive's name without
   its suffix), so each label file is there exactly once and no archive is.
5. Once harmonize's own file finder agrees, ``MANIFEST.json`` (the provenance: size,
   SHA-256, source URL and retrieval time of every file) is written and the folder is
   swapped into place, so a complete ``raw/<dataset>/`` appears at once or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pandas as pd
import requests

from .errors import DatasetError
from .io import write_json
from .layout import Layout
from .manifest import LABEL_FORMATS, DatasetSpec
from .sources import find_label_files
from .sources.archives import (
    ARCHIVE_SUFFIXES,
    ArchiveError,
    archive_stem,
    detect_archive,
    extract_members,
    list_members,
    safe_relpath,
)
from .sources.http import (
    ATTEMPTS,
    POOL_SIZE,
    TIMEOUT_S,
    RepositoryError,
    fetch,
    hash_file,
    http_session,
    normalize_checksum,
)
from .sources.labels import JUNK
from .sources.repositories import Endpoints, Record, RemoteFile, distinct_names, get_record, repository_of

DOWNLOAD_KEYS = ("repo", "doi", "compression", "compressed_archives", "file_filters", "label_fmt", "max_mb")
"""Manifest fields that decide what is downloaded (their hash is the rule's fingerprint)."""

COMPRESSIONS = {None: (), "zip": (".zip",), "tar.gz": (".tar.gz", ".tgz")}
"""``compression`` values and the archive names each selects from a record."""

SHAPEFILE_SIDECARS = (".dbf", ".shx", ".prj", ".cpg")
"""Files a shapefile is read with (attributes, index, CRS, encoding)."""

LFS_POINTER = b"version https://git-lfs.github.com/spec/"

CACHE_INDEX = ".fetched.json"
"""Per-dataset record of cached downloads (URL, checksum, SHA-256, retrieval time)."""

PROGRESS_INTERVAL_S = 10.0
"""Seconds between progress lines while bytes arrive (each finished file also gets one)."""


@dataclass(frozen=True)
class DownloadSettings:
    """How files are fetched (workflow config ``download``); never what is fetched.

    Attributes
    ----------
    workers : int
        Files of one dataset downloaded at the same time.
    connect_timeout_s : float
        Seconds to wait for a connection.
    read_timeout_s : float
        Seconds to wait for the next bytes of an answer; a server silent for longer
        fails the try.
    attempts : int
        Tries per request (with backoff) and per interrupted download (resumed).
    """

    workers: int = 4
    connect_timeout_s: float = TIMEOUT_S[0]
    read_timeout_s: float = TIMEOUT_S[1]
    attempts: int = ATTEMPTS

    def session(self, headers_by_host: dict[str, str] | None = None) -> requests.Session:
        """An HTTP session with these timeouts and retries, shared by the workers."""
        return http_session(
            headers_by_host, self.attempts, (self.connect_timeout_s, self.read_timeout_s),
            pool_size=max(POOL_SIZE, self.workers),
        )


class Progress:
    """Files and bytes of one dataset's downloads, reported as plain lines.

    Lines (not a progress bar) read the same in the executed notebook and in the log.
    One is written when a file is done, and at most every ``interval_s`` seconds while
    bytes arrive. The download threads call :meth:`add_bytes` concurrently.

    Parameters
    ----------
    dataset : str
    wanted : list of RemoteFile
        The files to verify or fetch (their listed sizes make the total).
    report : callable
        Receives each line (``print`` in the notebook).
    interval_s : float
        Least seconds between two lines about bytes.
    """

    def __init__(self, dataset: str, wanted: list[RemoteFile], report: Callable[[str], None],
                 interval_s: float = PROGRESS_INTERVAL_S):
        self.dataset = dataset
        self.n_files = len(wanted)
        self.total_bytes = sum(f.size_bytes or 0 for f in wanted)
        # A plain URL lists no size: the total is then a lower bound, shown as such.
        self.sizes_known = all(f.size_bytes is not None for f in wanted)
        self.report = report
        self.interval_s = interval_s
        self.files_done = 0
        self.bytes_done = 0
        self.bytes_received = 0
        self._started = self._last = time.monotonic()
        self._lock = threading.Lock()

    def start(self, source: str, workers: int) -> None:
        """Report what is about to be fetched, from where, how many at a time."""
        total = _size(self.total_bytes) if self.sizes_known else f"at least {_size(self.total_bytes)}"
        self.report(f"{self.dataset}: {self.n_files} file(s), {total}, from {source} ({workers} at a time)")

    def add_bytes(self, n_bytes: int) -> None:
        """Count bytes received (from any download thread)."""
        with self._lock:
            self.bytes_done += n_bytes
            self.bytes_received += n_bytes
            if time.monotonic() - self._last >= self.interval_s:
                self._emit()

    def file_done(self, remote: RemoteFile, reused: bool) -> None:
        """Count a file verified (``reused``: its cached copy, without a download)."""
        with self._lock:
            self.files_done += 1
            if reused:
                self.bytes_done += remote.size_bytes or 0
            how = "reused from the cache" if reused else "downloaded"
            self._emit(f"{remote.name} {how}" + (", checksum verified" if remote.checksum else ""))

    def _emit(self, event: str = "") -> None:
        self._last = now = time.monotonic()
        total = f" of {_size(self.total_bytes)}" if self.sizes_known else ""
        rate = self.bytes_received / max(now - self._started, 1e-9)
        line = f"{self.dataset}: {self.files_done}/{self.n_files} files, {_size(self.bytes_done)}{total}, {_size(rate)}/s"
        self.report(f"{line}; {event}" if event else line)


def _size(n_bytes: float) -> str:
    """``n_bytes`` in B, kB, MB or GB (decimal, as the repositories list sizes)."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= factor:
            return f"{n_bytes / factor:,.1f} {unit}"
    return f"{n_bytes:.0f} B"


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
        raise DatasetError(
            spec.name, None, f"compression {spec.compression!r} is not supported; use 'zip', 'tar.gz' or null",
        )


def is_archive(name: str) -> bool:
    """True for a name the download stage extracts (zip, tar.gz)."""
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
    and their shapefile sidecars, plus the archives named in ``compressed_archives``
    (or, when none are named, every archive of the kind ``compression`` names).

    Raises
    ------
    DatasetError
        When a named archive is missing or nothing would be fetched.
    """
    if record.named_files:
        return list(record.files)
    files = distinct_names(record.files)
    names = [f.name for f in files]
    named = list(spec.entry.get("compressed_archives") or [])
    missing = [a for a in named if a not in {PurePosixPath(n).name for n in names}]
    if missing:
        raise DatasetError(spec.name, record.url, f"compressed_archives {missing} not in the record; files there: {_listing(names)}")

    def wanted_archive(name: str) -> bool:
        return PurePosixPath(name).name in named if named else name.lower().endswith(COMPRESSIONS[spec.compression])

    archives = [n for n in names if is_archive(n) and wanted_archive(n)]
    labels = [n for n in names if not is_archive(n) and is_label_path(spec, n)]
    chosen = set(archives) | set(with_sidecars(spec, names, labels))
    if not chosen:
        raise DatasetError(
            spec.name, record.url,
            f"nothing to download: no {spec.label_fmt} file matches the file filters ({_filters_text(spec)}) "
            f"and no archive is to be extracted (compression {spec.compression!r}); files in the record: {_listing(names)}",
        )
    return [f for f in files if f.name in chosen]


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
    remote: RemoteFile, cache_dir: Path, cached: dict | None, session: requests.Session,
    limit: int | None = None, attempts: int = ATTEMPTS, on_bytes: Callable[[int], None] | None = None,
) -> tuple[dict, bool]:
    """Fetch one file into the cache, or reuse the cached copy, and return its record.

    Parameters
    ----------
    remote : RemoteFile
    cache_dir : Path
    cached : dict or None
        The file's entry in the cache index, from an earlier download.
    session : requests.Session
    limit : int, optional
        Largest size accepted, in bytes.
    attempts : int
        Transfers tried before giving up.
    on_bytes : callable, optional
        Called with the size of every block received.

    Returns
    -------
    record : dict
        ``name``, ``url``, ``size_bytes``, ``checksum`` (the repository's, or None),
        ``sha256`` and ``retrieved_at`` (UTC, when the bytes were downloaded).
    reused : bool
        True when the cached copy still matched and nothing was downloaded.
    """
    path = cache_dir / safe_relpath(remote.name)
    sha256 = _reusable(remote, cached, path)
    if sha256 is not None:
        return {**cached, "url": remote.url, "sha256": sha256}, True
    sha256 = fetch(session, remote.url, path, remote.size_bytes, remote.checksum, limit, attempts, on_bytes)
    return {
        "name": remote.name, "url": remote.url, "size_bytes": path.stat().st_size,
        "checksum": remote.checksum, "sha256": sha256, "retrieved_at": _utc_now(),
    }, False


def _check_not_lfs_pointer(spec: DatasetSpec, path: Path, url: str) -> None:
    if path.stat().st_size < 1024 and path.read_bytes().startswith(LFS_POINTER):
        raise DatasetError(spec.name, url, "is a Git LFS pointer, not the data; the repository keeps this file in LFS")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no second copy on disk when cache and raw share a filesystem
    except OSError:
        shutil.copy2(src, dst)


class _Stopped(Exception):
    """Another file of the dataset failed: this one stops, its partial file kept."""


def fetch_all(
    spec: DatasetSpec, wanted: list[RemoteFile], cache_dir: Path, index: dict, session: requests.Session,
    settings: DownloadSettings, progress: Progress,
) -> list[dict]:
    """Fetch (or reuse) every wanted file, ``settings.workers`` at a time.

    Each verified file is recorded in the cache index at once, so an interrupted run keeps
    it. The first failure stops the rest: files not started are not fetched, transfers
    under way stop at their next block and keep their partial file for the next run.

    Returns
    -------
    list of dict
        The files' records (see :func:`fetch_to_cache`), in the order of ``wanted``.

    Raises
    ------
    RepositoryError, DatasetError
        The first failure.
    """
    stop = threading.Event()

    def on_bytes(n_bytes: int) -> None:
        if stop.is_set():
            raise _Stopped
        progress.add_bytes(n_bytes)

    def fetch_one(remote: RemoteFile) -> dict:
        if stop.is_set():
            raise _Stopped
        entry, reused = fetch_to_cache(remote, cache_dir, index.get(remote.name), session,
                                       max_bytes(spec), settings.attempts, on_bytes)
        _check_not_lfs_pointer(spec, cache_dir / safe_relpath(remote.name), remote.url)
        progress.file_done(remote, reused)
        return entry

    done, failure = {}, None
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix=f"download-{spec.name}")
    try:
        for future in as_completed([pool.submit(fetch_one, remote) for remote in wanted]):
            try:
                entry = future.result()
            except (_Stopped, CancelledError):
                continue
            except (RepositoryError, DatasetError) as exc:
                failure = failure or exc
                stop.set()
                continue
            done[entry["name"]] = index[entry["name"]] = entry
            write_json(index, cache_dir / CACHE_INDEX)  # only this thread writes the index
    finally:
        stop.set()  # also on an interrupt: no thread goes on downloading
        pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        raise failure
    return [done[remote.name] for remote in wanted]


def _is_to_extract(spec: DatasetSpec, name: str, path: Path) -> bool:
    """An archive by name, or by content when the entry says the data come compressed
    (a URL's file may be named otherwise, e.g. ``.../download?id=3``)."""
    return is_archive(name) or (spec.compression is not None and detect_archive(path) is not None)


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
        if _is_to_extract(spec, entry["name"], src):
            prefix = archive_stem(safe_relpath(entry["name"]))
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


def _print_line(line: str) -> None:
    """Print at once: the notebook and its log show each line as it happens."""
    print(line, flush=True)


def _quiet(line: str) -> None:
    """Report nothing (``progress=False``)."""


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
    settings: DownloadSettings = DownloadSettings(),
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
        Defaults to :meth:`DownloadSettings.session` with the tokens found in the
        environment (``GITHUB_TOKEN``, ``ZENODO_TOKEN``, ``FIGSHARE_TOKEN``).
    progress : bool
        Print progress lines (files and bytes).
    settings : DownloadSettings
        Parallel downloads, timeouts and attempts.

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
    session = session or settings.session(endpoints.auth_headers())
    cache_dir = layout.download_cache(spec.name)
    raw = layout.raw_dir(spec.name)
    staging = raw.with_name(f".{raw.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record = _resolve(spec, session, endpoints)
        wanted = select_downloads(spec, record)
        index = _load_index(cache_dir)
        _check_limits(spec, wanted, cache_dir, index)
        report = Progress(spec.name, wanted, _print_line if progress else _quiet)
        report.start(record.url, settings.workers)
        fetched = fetch_all(spec, wanted, cache_dir, index, session, settings, report)
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
