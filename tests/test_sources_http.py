"""Downloads at the protocol level, against a real HTTP server on 127.0.0.1."""

import hashlib

import pytest

from pvlake.sources.http import RepositoryError, fetch, get_json, hash_file, http_session

DATA = bytes(range(256)) * 4096  # 1 MiB
PATH = "/files/labels.bin"


def md5(data: bytes) -> str:
    return f"md5:{hashlib.md5(data).hexdigest()}"


@pytest.fixture
def served(repository_server):
    return repository_server.add_file(PATH, DATA)


def test_download_is_verified_and_renamed_into_place(repository_server, served, tmp_path):
    dest = tmp_path / "cache" / "labels.bin"
    sha256 = fetch(http_session(), served, dest, len(DATA), md5(DATA))
    assert dest.read_bytes() == DATA
    assert sha256 == hashlib.sha256(DATA).hexdigest()
    assert not dest.with_name("labels.bin.part").exists()
    (request,) = repository_server.requests_to(PATH)
    assert request.headers["User-Agent"].startswith("pvlake/")
    assert request.headers["Accept-Encoding"] == "identity"


def test_a_dropped_connection_is_resumed_with_a_range_request(repository_server, served, tmp_path):
    repository_server.drop(PATH, after_bytes=300_000)
    dest = tmp_path / "labels.bin"
    fetch(http_session(), served, dest, len(DATA), md5(DATA))
    first, second = repository_server.requests_to(PATH)
    assert "Range" not in first.headers
    start = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= 300_000  # from where the partial file ends
    assert dest.read_bytes() == DATA


def test_a_partial_file_from_an_earlier_run_is_completed(repository_server, served, tmp_path):
    dest = tmp_path / "labels.bin"
    dest.with_name("labels.bin.part").write_bytes(DATA[:5000])
    fetch(http_session(), served, dest, len(DATA), md5(DATA))
    (request,) = repository_server.requests_to(PATH)
    assert request.headers["Range"] == "bytes=5000-"
    assert dest.read_bytes() == DATA


def test_a_server_that_ignores_ranges_gets_a_fresh_download(repository_server, served, tmp_path):
    repository_server.ignore_range(PATH)
    dest = tmp_path / "labels.bin"
    dest.with_name("labels.bin.part").write_bytes(b"stale bytes from another version")
    fetch(http_session(), served, dest, len(DATA), md5(DATA))
    assert len(repository_server.requests_to(PATH)) == 1
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize("status", [429, 503])
def test_busy_servers_are_retried(repository_server, served, tmp_path, status):
    repository_server.fail(PATH, status)
    fetch(http_session(), served, tmp_path / "labels.bin", len(DATA), md5(DATA))
    assert len(repository_server.requests_to(PATH)) == 2


def test_failures_name_the_url_and_the_status(repository_server, served, tmp_path):
    repository_server.fail(PATH, 404)
    with pytest.raises(RepositoryError, match=r"HTTP 404") as info:
        fetch(http_session(), served, tmp_path / "labels.bin")
    assert info.value.where == served
    assert len(repository_server.requests_to(PATH)) == 1  # a 404 is not retried
    repository_server.fail(PATH, 503, times=2)
    with pytest.raises(RepositoryError, match=r"HTTP 503"):
        fetch(http_session(attempts=2), served, tmp_path / "labels.bin")


@pytest.mark.parametrize(
    "size, checksum, message",
    [
        (len(DATA), md5(b"another file"), "checksum mismatch: the repository lists md5:"),
        (len(DATA) + 1, None, "the repository lists 1,048,577"),
    ],
)
def test_a_mismatch_leaves_no_file(served, tmp_path, size, checksum, message):
    out = tmp_path / "out"
    with pytest.raises(RepositoryError, match=message):
        fetch(http_session(), served, out / "labels.bin", size, checksum)
    assert list(out.iterdir()) == []


def test_a_file_above_the_limit_is_refused_before_its_body_is_read(served, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RepositoryError, match="above the limit of 0.0 MB"):
        fetch(http_session(), served, out / "labels.bin", max_bytes=1000)
    assert list(out.iterdir()) == []


def test_git_blob_checksum_is_git_hash_object(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    # `git hash-object hello.txt` prints ce0136...
    sha256, recomputed = hash_file(path, "git-sha1:CE013625030BA8DBA906F756967F9E9CA394464A")
    assert recomputed == "git-sha1:ce013625030ba8dba906f756967f9e9ca394464a"
    assert sha256 == hashlib.sha256(b"hello\n").hexdigest()


def test_a_token_reaches_its_host_only(repository_server):
    server = repository_server
    server.add_json("/api/record", {"ok": True})
    server.add_file("/storage/labels.bin", DATA)
    redirect = server.add_redirect("/download/labels.bin", f"{server.url_on('localhost')}/storage/labels.bin")
    session = http_session({f"127.0.0.1:{server.port}": "Bearer s3cret"})
    assert get_json(session, f"{server.url}/api/record") == {"ok": True}
    assert fetch(session, redirect, server.root / "out.bin", len(DATA)) == hashlib.sha256(DATA).hexdigest()
    assert server.requests_to("/api/record")[0].headers["Authorization"] == "Bearer s3cret"
    assert server.requests_to("/download/labels.bin")[0].headers["Authorization"] == "Bearer s3cret"
    (storage,) = server.requests_to("/storage/labels.bin")
    assert storage.host.startswith("localhost") and "Authorization" not in storage.headers
    assert "s3cret" not in repr(session.auth)
