"""A real HTTP server on 127.0.0.1 that plays Zenodo, Figshare, ScienceBase, GitHub and
plain file hosting for the download tests.

Files are served by ``RangeHTTPServer`` (proper 206 answers to ``Range`` requests, as
real hosting gives); the APIs answer with JSON shaped like the real services'. Faults
can be planted per path: an error status (with ``Retry-After: 0``), a connection dropped
mid-body, a server that stalls (sends nothing, or stops mid-body, until the server
closes), a slow answer, a server that ignores ``Range``. Every request is recorded with
its headers, and the most requests answered at once is counted.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from RangeHTTPServer import RangeRequestHandler

from pvlake.sources.repositories import Endpoints


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    host: str
    path: str
    query: str
    headers: dict


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(RangeRequestHandler):
    def __init__(self, *args, state: "RepositoryServer", **kwargs):
        self.state = state
        self.cut = None  # ("drop" | "stall", bytes sent before the body breaks off)
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        with self.state.answering():
            self._answer()

    def _answer(self):
        parts = urlsplit(self.path)
        path = parts.path
        self.state.seen.append(Seen(self.headers.get("Host", ""), path, parts.query, dict(self.headers)))
        fault = self.state.next_fault(path)
        if fault and fault[0] == "hold":
            time.sleep(fault[1])
        if fault and fault[0] == "stall" and fault[1] is None:
            self.state.released.wait()  # connection accepted, request read, no answer
            self.close_connection = True
            return
        if fault and fault[0] == "status":
            self.send_response(fault[1])
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in self.state.json:
            body = json.dumps(self.state.json[path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path in self.state.redirects:
            self.send_response(302)
            self.send_header("Location", self.state.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault and fault[0] == "ignore_range":
            del self.headers["Range"]
        if fault and fault[0] in ("drop", "stall"):
            self.cut = fault
        super().do_GET()

    def copyfile(self, source, outputfile):
        if self.cut is None:
            return super().copyfile(source, outputfile)
        kind, after_bytes = self.cut
        if self.range:
            source.seek(self.range[0])
        outputfile.write(source.read(after_bytes))
        outputfile.flush()
        if kind == "stall":
            self.state.released.wait()
        self.close_connection = True  # the rest of the promised body never comes


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that hang up early (a refused download) are expected here


class RepositoryServer:
    """The server, its served files and planted faults.

    Parameters
    ----------
    root : Path
        Folder the served files are written to.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.json: dict[str, object] = {}
        self.redirects: dict[str, str] = {}
        self.faults: dict[str, list] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.released = threading.Event()  # set on close: stalled answers end
        self.active = 0
        self.max_active = 0
        handler = partial(_Handler, state=self, directory=str(self.root))
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_on(self, host: str) -> str:
        """The same server under another host name (a different host to HTTP clients)."""
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- content ---------------------------------------------------------------------

    def add_file(self, path: str, data: bytes) -> str:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"{self.url}/{path.lstrip('/')}"

    def add_json(self, path: str, obj) -> str:
        self.json[path] = obj
        return f"{self.url}{path}"

    def add_redirect(self, path: str, location: str) -> str:
        self.redirects[path] = location
        return f"{self.url}{path}"

    # --- faults ----------------------------------------------------------------------

    def fail(self, path: str, status: int = 503, times: int = 1) -> None:
        self.faults.setdefault(path, []).extend([("status", status)] * times)

    def drop(self, path: str, after_bytes: int, times: int = 1) -> None:
        self.faults.setdefault(path, []).extend([("drop", after_bytes)] * times)

    def hold(self, path: str, seconds: float, times: int = 1) -> None:
        """Answer only after ``seconds`` (a slow server: requests overlap)."""
        self.faults.setdefault(path, []).extend([("hold", seconds)] * times)

    def stall(self, path: str, after_bytes: int | None = None, times: int = 1) -> None:
        """Accept the request, then send nothing (``after_bytes`` None) or stop a file's body
        after ``after_bytes`` bytes, keeping the connection open until the server closes."""
        self.faults.setdefault(path, []).extend([("stall", after_bytes)] * times)

    def ignore_range(self, path: str, times: int = 1) -> None:
        self.faults.setdefault(path, []).extend([("ignore_range", None)] * times)

    def next_fault(self, path: str):
        with self._lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None

    @contextmanager
    def answering(self):
        """Count a request being answered (``active``, and the most at once: ``max_active``)."""
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    # --- the repositories ------------------------------------------------------------

    def endpoints(self) -> Endpoints:
        """Every service's base URL on this server."""
        return Endpoints(
            zenodo=f"{self.url}/zenodo/api", figshare=f"{self.url}/figshare/v2",
            sciencebase=f"{self.url}/sciencebase/catalog", github_api=f"{self.url}/github-api",
            github_raw=f"{self.url}/github-raw", doi=f"{self.url}/doi",
        )

    def repositories(self) -> dict:
        """The workflow config's ``repositories`` block, every service on this server."""
        e = self.endpoints()
        return {"zenodo": {"api_url": e.zenodo}, "figshare": {"api_url": e.figshare},
                "sciencebase": {"api_url": e.sciencebase},
                "github": {"api_url": e.github_api, "raw_url": e.github_raw}}

    def zenodo(self, record_id: int, files: dict[str, bytes], version: str = "1.0") -> dict:
        """A Zenodo record (the REST API's list-of-files answer), files at their content links."""
        entries = []
        for name, data in files.items():
            path = f"/zenodo/api/records/{record_id}/files/{name}/content"
            self.add_file(path, data)
            entries.append({"id": f"f-{name}", "key": name, "size": len(data),
                            "checksum": f"md5:{hashlib.md5(data).hexdigest()}",
                            "links": {"self": f"{self.url}{path}"}})
        record = {"id": record_id, "metadata": {"title": f"record {record_id}", "version": version}, "files": entries}
        self.add_json(f"/zenodo/api/records/{record_id}", record)
        return record

    def figshare(self, article_id: int, version: int, files: dict[str, bytes], storage_host: str = "localhost") -> dict:
        """A Figshare article version whose download URLs redirect to "storage" on another host."""
        entries = []
        for i, (name, data) in enumerate(files.items()):
            stored = f"/storage/{article_id}/{name}"
            self.add_file(stored, data)
            download = self.add_redirect(f"/ndownloader/files/{article_id}{i}", f"{self.url_on(storage_host)}{stored}")
            entries.append({"id": int(f"{article_id}{i}"), "name": name, "size": len(data), "is_link_only": False,
                            "computed_md5": hashlib.md5(data).hexdigest(), "supplied_md5": "",
                            "download_url": download})
        article = {"id": article_id, "title": f"article {article_id}", "version": version, "files": entries}
        self.add_json(f"/figshare/v2/articles/{article_id}/versions/{version}", article)
        return article

    def sciencebase(self, item_id: str, files: dict[str, bytes], doi: str | None = None) -> dict:
        """A ScienceBase item, optionally behind a DOI in the doi.org handle API."""
        entries = []
        for name, data in files.items():
            url = self.add_file(f"/sciencebase/catalog/file/get/{item_id}/{name}", data)
            entries.append({"name": name, "size": len(data), "downloadUri": url,
                            "checksum": {"value": hashlib.md5(data).hexdigest(), "type": "MD5"}})
        item = {"id": item_id, "title": f"item {item_id}", "provenance": {"lastUpdated": "2024-01-02T03:04:05Z"},
                "files": entries}
        self.add_json(f"/sciencebase/catalog/item/{item_id}", item)
        if doi:
            self.add_json(f"/doi/api/handles/{doi}", {"responseCode": 1, "handle": doi, "values": [
                {"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": {}}},
                {"index": 1, "type": "URL", "data": {"format": "string",
                                                    "value": f"https://www.sciencebase.gov/catalog/item/{item_id}"}},
            ]})
        return item

    def github(self, owner: str, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A GitHub repository at one commit: repo, commits and git-trees API plus raw files.
        Returns the commit SHA."""
        commit = hashlib.sha1(json.dumps(sorted(files), default=str).encode() + owner.encode()).hexdigest()
        base = f"/github-api/repos/{owner}/{repo}"
        self.add_json(base, {"full_name": f"{owner}/{repo}", "default_branch": branch})
        self.add_json(f"{base}/commits/{branch}", {"sha": commit})
        tree, folders = [], set()
        for path, data in files.items():
            self.add_file(f"/github-raw/{owner}/{repo}/{commit}/{path}", data)
            tree.append({"path": path, "mode": "100644", "type": "blob", "sha": git_blob_sha1(data), "size": len(data)})
            folders.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
        tree += [{"path": f, "mode": "040000", "type": "tree", "sha": "0" * 40} for f in sorted(folders)]
        self.add_json(f"{base}/git/trees/{commit}", {"sha": commit, "tree": tree, "truncated": False})
        return commit
