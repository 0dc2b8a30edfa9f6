"""HTTP transport for the repository clients: one session, resumable verified downloads.

Every request carries the project's User-Agent, a timeout, and retries with backoff on
connection failures and on 429/5xx answers (honouring ``Retry-After``). A download streams
into ``<file>.part``, resumes an interrupted transfer with an HTTP ``Range`` request, is
checked against the size and checksum the repository publishes, and only then is renamed
to its final name.

Access tokens come from environment variables only and are sent only to the host of the
service they belong to (see :class:`HostAuth`); they never appear in a URL, a log line or
an exception message.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from .. import __version__

USER_AGENT = f"pvlake/{__version__} (ice-mELT DuckLake; open PV label datasets)"

TIMEOUT_S = (30, 300)
"""Seconds to connect, and to wait for the next bytes of an answer."""

ATTEMPTS = 5
"""Tries per request (connection errors, 429/5xx) and per interrupted download."""

RETRY_STATUSES = (429, 500, 502, 503, 504)

BACKOFF_S = 2.0
"""Backoff factor: waits 0, 4, 8, 16 s between tries unless the server says otherwise."""

CHUNK_BYTES = 1 << 20
"""Block size for hashing files."""

STREAM_CHUNK_BYTES = 1 << 16
"""Block size for network reads; a dropped connection loses at most one (it is re-fetched)."""

TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
"""Failures after which a download is resumed rather than given up."""

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Restart(Exception):
    """The partial file cannot be resumed; the next attempt starts from byte 0."""


class RepositoryError(Exception):
    """A repository or download failure: the URL and what went wrong.

    Parameters
    ----------
    where : str
        The URL (or identifier) concerned.
    reason : str
        What went wrong, in words a researcher can act on.
    """

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class HostAuth(requests.auth.AuthBase):
    """Adds an ``Authorization`` header to requests for the hosts it knows, only.

    Requests drops the header when a redirect leaves the host, so a token for an API
    never reaches the storage service a download is redirected to.

    Parameters
    ----------
    headers_by_host : dict
        ``host[:port]`` -> value of the ``Authorization`` header.
    """

    def __init__(self, headers_by_host: dict[str, str]):
        self.headers_by_host = dict(headers_by_host)

    def __call__(self, request):
        value = self.headers_by_host.get(urlsplit(request.url).netloc)
        if value:
            request.headers["Authorization"] = value
        return request

    def __repr__(self) -> str:
        return f"HostAuth(hosts={sorted(self.headers_by_host)})"


def http_session(headers_by_host: dict[str, str] | None = None, attempts: int = ATTEMPTS) -> requests.Session:
    """A session with the project's User-Agent, retries and per-host tokens.

    Parameters
    ----------
    headers_by_host : dict, optional
        ``Authorization`` header values by host (see :class:`HostAuth`).
    attempts : int
        Tries per request on connection errors and 429/5xx answers.
    """
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    retry = Retry(
        total=attempts - 1, backoff_factor=BACKOFF_S, status_forcelist=RETRY_STATUSES,
        allowed_methods={"GET", "HEAD"}, respect_retry_after_header=True, raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if headers_by_host:
        session.auth = HostAuth(headers_by_host)
    return session


def http_reason(response: requests.Response) -> str:
    """Why an answer is a failure, with a hint where the fix is known."""
    reason = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
    if response.status_code in (403, 429) and response.headers.get("X-RateLimit-Remaining") == "0":
        reason += " (API rate limit exhausted; a token raises it: set GITHUB_TOKEN)"
    elif response.status_code == 429:
        reason += " (rate limited by the repository; try again later)"
    elif response.status_code in (401, 403):
        reason += " (access denied; restricted records need a token in the environment)"
    return reason


def get_json(session: requests.Session, url: str, params: dict | None = None):
    """GET a JSON document.

    Raises
    ------
    RepositoryError
        On a connection failure, a non-200 answer, or a body that is not JSON.
    """
    try:
        response = session.get(url, params=params, timeout=TIMEOUT_S, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise RepositoryError(url, f"request failed ({type(exc).__name__}: {exc})") from exc
    if response.status_code != 200:
        raise RepositoryError(response.url, http_reason(response))
    try:
        return response.json()
    except ValueError as exc:
        raise RepositoryError(response.url, "the answer is not JSON") from exc


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"<algorithm>:<hex>"``; the algorithm is one hashlib knows or ``git-sha1``."""
    algorithm, _, digest = checksum.partition(":")
    algorithm = algorithm.lower()
    if not digest or (algorithm != "git-sha1" and algorithm not in hashlib.algorithms_available):
        raise ValueError(f"checksum {checksum!r} is not '<algorithm>:<hex digest>'")
    return algorithm, digest.lower()


def normalize_checksum(checksum: str) -> str:
    """``"<algorithm>:<hex>"`` in lower case, as :func:`hash_file` recomputes it."""
    return "{}:{}".format(*parse_checksum(checksum))


def _hasher(algorithm: str, size_bytes: int):
    if algorithm == "git-sha1":
        # Git hashes a blob with a header: SHA-1 of b"blob <size>\0" + content.
        h = hashlib.sha1()
        h.update(b"blob %d\0" % size_bytes)
        return h
    return hashlib.new(algorithm)


def hash_file(path: str | Path, checksum: str | None = None) -> tuple[str, str | None]:
    """SHA-256 of a file and, in the same pass, its digest in ``checksum``'s algorithm.

    Returns
    -------
    sha256 : str
        Hex digest.
    recomputed : str or None
        ``"<algorithm>:<hex>"`` in the algorithm of ``checksum`` (None without one), to
        compare with ``checksum``.
    """
    path = Path(path)
    sha256 = hashlib.sha256()
    algorithm = parse_checksum(checksum)[0] if checksum else None
    other = _hasher(algorithm, path.stat().st_size) if algorithm not in (None, "sha256") else None
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            sha256.update(block)
            if other is not None:
                other.update(block)
    if algorithm is None:
        return sha256.hexdigest(), None
    return sha256.hexdigest(), f"{algorithm}:{(other or sha256).hexdigest()}"


def _content_range(response: requests.Response) -> tuple[int, int | None] | None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not match:
        return None
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.1f} MB"


def _stream(response, part: Path, offset: int, total: int | None, url: str, max_bytes: int | None, progress: bool) -> None:
    mode = "ab" if offset else "wb"
    written = offset
    with open(part, mode) as fh, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), disable=not progress, mininterval=2,
    ) as bar:
        for chunk in response.iter_content(STREAM_CHUNK_BYTES):
            written += len(chunk)
            if max_bytes is not None and written > max_bytes:
                raise RepositoryError(url, f"larger than the limit of {_mb(max_bytes)} (manifest max_mb)")
            fh.write(chunk)
            bar.update(len(chunk))


def _transfer(session, url: str, part: Path, size_bytes: int | None, max_bytes: int | None, progress: bool) -> None:
    """One attempt: fetch what ``part`` lacks. Raises TRANSIENT errors to be retried."""
    offset = part.stat().st_size if part.exists() else 0
    # Identity encoding: byte ranges and lengths then refer to the file itself.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
        if response.status_code == 416 and offset and offset == size_bytes:
            return  # the partial file was already complete
        span = _content_range(response) if response.status_code == 206 else None
        if span is not None and span[0] == offset:
            total = span[1]
        elif response.status_code == 200:
            # The server ignored the range (or there was none): start over.
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
        elif response.status_code == 416:
            part.unlink()
            raise _Restart("the partial file does not fit the remote file")
        else:
            raise RepositoryError(response.url, http_reason(response))
        total = total if total is not None else size_bytes
        if max_bytes is not None and total is not None and total > max_bytes:
            raise RepositoryError(url, f"is {_mb(total)}, above the limit of {_mb(max_bytes)} (manifest max_mb)")
        _stream(response, part, offset, total, url, max_bytes, progress)
        if total is not None and part.stat().st_size < total:
            raise requests.exceptions.ChunkedEncodingError(f"connection closed at {part.stat().st_size} of {total} bytes")


def fetch(
    session: requests.Session,
    url: str,
    dest: str | Path,
    size_bytes: int | None = None,
    checksum: str | None = None,
    max_bytes: int | None = None,
    attempts: int = ATTEMPTS,
    progress: bool = False,
) -> str:
    """Download ``url`` to ``dest``, resuming and verifying; return the file's SHA-256.

    The bytes go to ``<dest>.part``; an interrupted transfer (or an earlier run's partial
    file) is resumed with a ``Range`` request, or restarted when the server ignores ranges.
    ``dest`` appears only once the size and checksum match.

    Parameters
    ----------
    session : requests.Session
        From :func:`http_session`.
    url : str
        What to download.
    dest : str or Path
        Final path of the file.
    size_bytes : int, optional
        Size the repository states; checked.
    checksum : str, optional
        ``"<algorithm>:<hex>"`` the repository states (md5, sha256, git-sha1, ...); checked.
    max_bytes : int, optional
        Refuse a larger file (before downloading it when the server states its size).
    attempts : int
        Transfers tried before giving up.
    progress : bool
        Show a tqdm bar of bytes.

    Returns
    -------
    str
        SHA-256 hex digest of the downloaded file.

    Raises
    ------
    RepositoryError
        When the download fails, is too large, or does not match the size or checksum.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for _ in range(attempts):
        try:
            _transfer(session, url, part, size_bytes, max_bytes, progress)
            break
        except (*TRANSIENT, _Restart) as exc:
            last = exc
        except RepositoryError:
            part.unlink(missing_ok=True)  # refused or gone: nothing worth resuming
            raise
    else:
        raise RepositoryError(url, f"download failed after {attempts} attempts ({type(last).__name__}: {last})")
    actual = part.stat().st_size
    if size_bytes is not None and actual != size_bytes:
        part.unlink()
        raise RepositoryError(url, f"downloaded {actual:,} bytes but the repository lists {size_bytes:,}")
    sha256, recomputed = hash_file(part, checksum)
    if checksum is not None and recomputed != normalize_checksum(checksum):
        part.unlink()
        raise RepositoryError(url, f"checksum mismatch: the repository lists {checksum}, the download has {recomputed}")
    os.replace(part, dest)
    return sha256
