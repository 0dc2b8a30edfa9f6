"""A real HTTP server on 127.0.0.1 that plays Overture's release bucket for the context tests.

Files are served by ``RangeHTTPServer`` (206 answers to ``Range`` requests, as S3 gives
them); ``GET /?list-type=2&prefix=...`` answers with an S3 ``ListObjectsV2`` XML listing
(paged by ``page_size`` keys, with continuation tokens, and ``delimiter`` for common
prefixes), as the real bucket does over HTTPS. Every request is recorded with its
``Range`` header and the body bytes sent, so a test can tell how much of a file was read.
A path prefix can be made to answer with an error status.
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from RangeHTTPServer import RangeRequestHandler


@dataclass(frozen=True)
class Seen:
    """One request the server answered."""

    method: str
    path: str
    query: str
    range: str | None


class _Handler(RangeRequestHandler):
    def __init__(self, *args, bucket: "OvertureBucket", **kwargs):
        self.bucket = bucket
        super().__init__(*args, directory=str(bucket.root), **kwargs)

    def log_message(self, *args):  # keep test output quiet
        pass

    def _record(self) -> None:
        parts = urlsplit(self.path)
        with self.bucket.lock:
            self.bucket.seen.append(Seen(self.command, unquote(parts.path), parts.query, self.headers.get("Range")))

    def _fault(self) -> bool:
        path = unquote(urlsplit(self.path).path)
        for prefix, status in self.bucket.faults.items():
            if path.startswith(prefix):
                self.send_error(status)
                return True
        return False

    def do_HEAD(self):
        self._record()
        if not self._fault():
            super().do_HEAD()

    def do_GET(self):
        self._record()
        if self._fault():
            return
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/" and query.get("list-type") == ["2"]:
            self._list(query)
            return
        super().do_GET()

    def copyfile(self, source, outputfile):
        bucket = self.bucket

        class Counting:
            def write(self, data):
                with bucket.lock:
                    bucket.bytes_sent += len(data)
                return outputfile.write(data)

        super().copyfile(source, Counting())

    def _list(self, query: dict) -> None:
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [None])[0]
        start = int(query.get("continuation-token", ["0"])[0])
        keys = sorted(str(p.relative_to(self.bucket.root)) for p in self.bucket.root.rglob("*") if p.is_file())
        keys = [k for k in keys if k.startswith(prefix)]
        prefixes: list[str] = []
        if delimiter:
            rest = [k[len(prefix):] for k in keys]
            prefixes = sorted({prefix + r.split(delimiter)[0] + delimiter for r in rest if delimiter in r})
            keys = [k for k, r in zip(keys, rest) if delimiter not in r]
        page = keys[start:start + self.bucket.page_size]
        truncated = start + self.bucket.page_size < len(keys)
        body = ['<?xml version="1.0" encoding="UTF-8"?>',
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                "<Name>overturemaps-us-west-2</Name>", f"<Prefix>{html.escape(prefix)}</Prefix>",
                f"<KeyCount>{len(page)}</KeyCount>", f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if truncated:
            body.append(f"<NextContinuationToken>{start + self.bucket.page_size}</NextContinuationToken>")
        for key in page:
            size = (self.bucket.root / key).stat().st_size
            body.append(f"<Contents><Key>{html.escape(key)}</Key><Size>{size}</Size></Contents>")
        body += [f"<CommonPrefixes><Prefix>{html.escape(p)}</Prefix></CommonPrefixes>" for p in prefixes]
        body.append("</ListBucketResult>")
        data = "\n".join(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class OvertureBucket:
    """The server; ``url`` is the bucket's base URL. Stop it with :meth:`close`.

    Parameters
    ----------
    root : Path
        Folder that plays the bucket (``release/<release>/theme=divisions/...`` inside).
    page_size : int
        Keys per listing page.
    """

    def __init__(self, root: Path, page_size: int = 1000):
        self.root = Path(root)
        self.page_size = page_size
        self.faults: dict[str, int] = {}
        self.seen: list[Seen] = []
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, bucket=self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self) -> None:
        """Forget the requests seen, the bytes sent and the faults."""
        with self.lock:
            self.seen.clear()
            self.bytes_sent = 0
            self.faults.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
