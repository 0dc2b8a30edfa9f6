"""HTTP transport for the repository clients: one session, resumable verified downloads.

Every request carries the project's User-Agent and a (connect, read) timeout, and is
retried with backoff on connection failures, timeouts before the answer, and 429/5xx
answers (honouring ``Retry-After``). A download streams into ``<file>.part``; a transfer
that breaks off mid-body (the connection drops, or no bytes come within the read timeout)
is resumed with an HTTP ``Range`` request. The file is checked against the size and
checksum the repository publishes, and only then renamed to its final name.

Access tokens come from environment variables only and are sent only to the host of the
service they belong to (see :class:`HostAuth`); they never appear in a URL, a log line or
an exception message.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .. import __version__

USER_AGENT = f"pvlake/{__version__} (ice-mELT DuckLake; open PV label datasets)"

TIMEOUT_S = (30.0, 300.0)
"""Seconds to connect, and to wait for the next bytes of an answer."""

ATTEMPTS = 5
"""Tries per request (connection errors, timeouts, 429/5xx) and per interrupted download."""

POOL_SIZE = 10
"""Connections kept open per host (urllib3's default); more for more parallel downloads."""

RETRY_STATUSES = (429, 500, 502, 503, 504)

BACKOFF_S = 2.0
"""Backoff factor: waits 0, 4, 8, 16 s between tries unless the server says otherwise."""

CHUNK_BYTES = 1 << 20
"""Block size for hashing files."""

STREAM_CHUNK_BYTES = 1 << 16
"""Block size for network reads; a dropped connection loses at most one (it is re-fetched)."""

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Restart(Exception):
    """The partial file cannot be resumed; the next attempt starts from byte 0."""


class _Interrupted(Exception):
    """The body broke off before its end; the next attempt resumes from the partial file."""


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


class TimeoutAdapter(HTTPAdapter):
    """An adapter that gives every request a timeout unless the call names one.

    requests has no session-wide timeout, and a request without one waits forever on a
    server that accepts the connection and then sends nothing.

    Parameters
    ----------
    timeout_s : tuple of float
        Seconds to connect, and to wait for the next bytes of an answer.
    **kwargs
        Passed to :class:`requests.adapters.HTTPAdapter`.
    """

    def __init__(self, timeout_s: tuple[float, float] = TIMEOUT_S, **kwargs):
        self.timeout_s = tuple(timeout_s)
        super().__init__(**kwargs)

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().send(request, **kwargs)


def http_session(
    headers_by_host: dict[str, str] | None = None,
    attempts: int = ATTEMPTS,
    timeout_s: tuple[float, float] = TIMEOUT_S,
    pool_size: int = POOL_SIZE,
    retry_methods: frozenset[str] = frozenset({"GET", "HEAD"}),
) -> requests.Session:
    """A session with the project's User-Agent, timeouts, retries and per-host tokens.

    Parameters
    ----------
    headers_by_host : dict, optional
        ``Authorization`` header values by host (see :class:`HostAuth`).
    attempts : int
        Tries per request on connection errors, timeouts before the answer, and 429/5xx
        answers.
    timeout_s : tuple of float
        Seconds to connect, and to wait for the next bytes of an answer.
    pool_size : int
        Connections kept per host: at least the number of threads sharing the session.
    retry_methods : frozenset of str
        Methods that are retried; only those that do not change anything on the server
        (a STAC API ``POST /search`` is a query, so the STAC stage adds ``POST``).
    """
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    retry = Retry(
        total=attempts - 1, backoff_factor=BACKOFF_S, status_forcelist=RETRY_STATUSES,
        allowed_methods=retry_methods, respect_retry_after_header=True, raise_on_status=False,
    )
    adapter = TimeoutAdapter(timeout_s, max_retries=retry, pool_maxsize=pool_size)
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


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and every error it wraps (requests keeps urllib3's in ``args``, urllib3 its
    cause in ``reason``)."""
    found, todo = [], [exc]
    while todo:
        err = todo.pop()
        if isinstance(err, BaseException) and not any(err is f for f in found):
            found.append(err)
            todo += [err.__cause__, err.__context__, getattr(err, "reason", None), *err.args]
    return found


def failure_reason(session: requests.Session, url: str, exc: Exception) -> str:
    """Why a request got no complete answer, in words: a timeout (with its length), an
    unreachable host, or the error itself."""
    connect_s, read_s = getattr(session.get_adapter(url), "timeout_s", TIMEOUT_S)
    causes = _causes(exc)

    def first(*types):
        return next((c for c in causes if isinstance(c, types)), None)

    if first(urllib3.exceptions.ReadTimeoutError, requests.ReadTimeout):
        return f"timed out: the server sent nothing for {read_s:g} s (read timeout)"
    # NewConnectionError (refused, unknown host) subclasses ConnectTimeoutError: ask first.
    refused = first(urllib3.exceptions.NewConnectionError)
    if refused:
        return f"unreachable ({str(refused).split(': ', 1)[-1]})"
    if first(urllib3.exceptions.ConnectTimeoutError, requests.ConnectTimeout):
        return f"unreachable: no connection within {connect_s:g} s (connect timeout)"
    return f"request failed ({type(exc).__name__}: {exc})"


def get_json(session: requests.Session, url: str, params: dict | None = None):
    """GET a JSON document.

    Raises
    ------
    RepositoryError
        On a connection failure or timeout (after the session's retries), a non-200
        answer, or a body that is not JSON.
    """
    try:
        response = session.get(url, params=params, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise RepositoryError(url, failure_reason(session, url, exc)) from exc
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


OnBytes = Callable[[int], None] | None
"""Called with the size of each block received (progress reports)."""


def _stream(response, part: Path, offset: int, url: str, max_bytes: int | None, on_bytes: OnBytes) -> None:
    written = offset
    with open(part, "ab" if offset else "wb") as fh:
        for chunk in response.iter_content(STREAM_CHUNK_BYTES):
            written += len(chunk)
            if max_bytes is not None and written > max_bytes:
                raise RepositoryError(url, f"larger than the limit of {_mb(max_bytes)} (manifest max_mb)")
            fh.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))


def _receive(session: requests.Session, response: requests.Response, url: str, part: Path, offset: int,
             size_bytes: int | None, max_bytes: int | None, on_bytes: OnBytes) -> None:
    """Append the answer's body to ``part``, which holds ``offset`` bytes already."""
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
    try:
        _stream(response, part, offset, url, max_bytes, on_bytes)
    except requests.RequestException as exc:
        raise _Interrupted(failure_reason(session, url, exc)) from exc
    if total is not None and part.stat().st_size < total:
        raise _Interrupted(f"the connection closed at {part.stat().st_size:,} of {total:,} bytes")


def _transfer(session: requests.Session, url: str, part: Path, size_bytes: int | None, max_bytes: int | None,
              on_bytes: OnBytes) -> None:
    """One attempt: fetch what ``part`` lacks.

    Raises ``_Interrupted`` or ``_Restart`` for the next attempt, and RepositoryError to
    give up: a request without an answer (the session has retried it already; ``part``
    stays for a later run to resume), or a refusal or a file too large (``part`` goes).
    """
    offset = part.stat().st_size if part.exists() else 0
    # Identity encoding: byte ranges and lengths then refer to the file itself.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(url, headers=headers, stream=True)
    except requests.RequestException as exc:
        raise RepositoryError(url, failure_reason(session, url, exc)) from exc
    with response:
        try:
            _receive(session, response, url, part, offset, size_bytes, max_bytes, on_bytes)
        except RepositoryError:
            part.unlink(missing_ok=True)  # refused, gone or too large: nothing worth resuming
            raise


def fetch(
    session: requests.Session,
    url: str,
    dest: str | Path,
    size_bytes: int | None = None,
    checksum: str | None = None,
    max_bytes: int | None = None,
    attempts: int = ATTEMPTS,
    on_bytes: OnBytes = None,
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
        Transfers tried before giving up (each request is also retried by the session).
    on_bytes : callable, optional
        Called with the size of every block received (progress reports). An exception it
        raises stops the download and keeps ``<dest>.part`` for a later resume.

    Returns
    -------
    str
        SHA-256 hex digest of the downloaded file.

    Raises
    ------
    RepositoryError
        When the download fails or times out, is too large, or does not match the size
        or checksum.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for _ in range(attempts):
        try:
            _transfer(session, url, part, size_bytes, max_bytes, on_bytes)
            break
        except (_Interrupted, _Restart) as exc:
            last = exc
    else:
        raise RepositoryError(url, f"download failed after {attempts} attempts: {last}")
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
