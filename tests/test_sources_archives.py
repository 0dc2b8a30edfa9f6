"""Safe extraction of zip and tar.gz: hostile members are refused, only what is asked for is written."""

import hashlib
import io
import stat
import tarfile
import zipfile

import pytest

from pvlake.sources.archives import (
    ArchiveError,
    archive_stem,
    detect_archive,
    extract_members,
    list_members,
    safe_relpath,
)


def make_zip(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def test_only_the_named_members_are_extracted(tmp_path):
    archive = make_zip(tmp_path / "set.zip", {
        "GPKG/arrays.gpkg": b"arrays", "GPKG/panels.gpkg": b"panels", "LabeledImages/a.tif": b"tif",
    })
    members = list_members(archive)
    assert members == ["GPKG/arrays.gpkg", "GPKG/panels.gpkg", "LabeledImages/a.tif"]
    (out,) = extract_members(archive, ["GPKG/arrays.gpkg"], tmp_path / "raw" / "set")
    assert (out.path, out.size_bytes, out.sha256) == ("GPKG/arrays.gpkg", 6, hashlib.sha256(b"arrays").hexdigest())
    written = sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*") if p.is_file())
    assert written == ["set/GPKG/arrays.gpkg"]


@pytest.mark.parametrize("name", ["../evil.geojson", "/etc/evil.geojson", "a/../../evil.geojson",
                                  "..\\evil.geojson", "C:/evil.geojson"])
def test_a_member_that_could_escape_refuses_the_archive(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"ok.geojson": b"{}", name: b"{}"})
    with pytest.raises(ArchiveError, match="unsafe path") as info:
        list_members(archive)
    assert info.value.where == "bad.zip"
    with pytest.raises(ArchiveError, match="unsafe path"):
        extract_members(archive, [name], tmp_path / "out")
    assert not (tmp_path / "evil.geojson").exists() and not (tmp_path / "out" / "evil.geojson").exists()


def test_symbolic_links_and_folders_are_not_files(tmp_path):
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("data/passwd.geojson")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr(zipfile.ZipInfo("data/"), b"")
        zf.writestr("data/real.geojson", b"{}")
    assert list_members(archive) == ["data/real.geojson"]


def test_repeated_member_names_are_refused(tmp_path):
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("a.geojson", b"{}")
        zf.writestr("./a.geojson", b"{}")
        zf.writestr("a.geojson", b"[]")
    with pytest.raises(ArchiveError, match="'a.geojson' appears twice"):
        list_members(archive)


def test_a_likely_zip_bomb_is_refused(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.geojson": bytes(20_000_000)})
    info = zipfile.ZipFile(archive).getinfo("zeros.geojson")
    assert info.file_size / info.compress_size > 500
    with pytest.raises(ArchiveError, match="possible zip bomb") as err:
        extract_members(archive, ["zeros.geojson"], tmp_path / "out")
    assert err.value.where == "bomb.zip/zeros.geojson"
    assert not (tmp_path / "out" / "zeros.geojson").exists()


def test_a_corrupt_member_fails_its_crc_check(tmp_path):
    payload = b'{"type": "FeatureCollection", "features": []}'
    archive = make_zip(tmp_path / "crc.zip", {"a.geojson": payload}, zipfile.ZIP_STORED)
    raw = archive.read_bytes()
    archive.write_bytes(raw.replace(payload, payload.replace(b"Feature", b"Fxature"), 1))
    with pytest.raises(ArchiveError, match="cannot be extracted.*CRC"):
        extract_members(archive, ["a.geojson"], tmp_path / "out")


def test_unreadable_archives_are_reported(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        list_members(tmp_path / "broken.zip")


def test_safe_relpath_normalises():
    assert safe_relpath("./GPKG//arrays.gpkg") == "GPKG/arrays.gpkg"
    assert safe_relpath("GPKG\\arrays.gpkg") == "GPKG/arrays.gpkg"
    with pytest.raises(ValueError):
        safe_relpath("")


def make_tar(path, members: dict[str, bytes], links: dict[str, str] | None = None, mode="w:gz"):
    """A tar archive with regular files, plus symbolic links (name -> target)."""
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def test_a_tar_gz_is_extracted_like_a_zip(tmp_path):
    archive = make_tar(tmp_path / "farms.tar.gz", {"farms/a.geojson": b"aaa", "farms/b.geojson": b"bb",
                                                   "docs/readme.txt": b"r"},
                       links={"farms/passwd.geojson": "/etc/passwd", "farms/up.geojson": "../../x"})
    assert detect_archive(archive) == "tar" and archive_stem("x/farms.tar.gz") == "x/farms"
    assert list_members(archive) == ["farms/a.geojson", "farms/b.geojson", "docs/readme.txt"]  # links are no files
    (out,) = extract_members(archive, ["farms/b.geojson"], tmp_path / "raw")
    assert (out.path, out.size_bytes, out.sha256) == ("farms/b.geojson", 2, hashlib.sha256(b"bb").hexdigest())
    assert sorted(p.name for p in (tmp_path / "raw").rglob("*") if p.is_file()) == ["b.geojson"]
    with pytest.raises(ArchiveError, match="has no regular file 'farms/passwd.geojson'"):
        extract_members(archive, ["farms/passwd.geojson"], tmp_path / "raw")
    assert not (tmp_path / "raw" / "farms" / "passwd.geojson").exists()


@pytest.mark.parametrize("name", ["../evil.geojson", "/etc/evil.geojson", "a/../../evil.geojson"])
def test_a_tar_member_that_could_escape_refuses_the_archive(tmp_path, name):
    archive = make_tar(tmp_path / "bad.tgz", {"ok.geojson": b"{}", name: b"{}"})
    with pytest.raises(ArchiveError, match="unsafe path") as info:
        list_members(archive)
    assert info.value.where == "bad.tgz"
    with pytest.raises(ArchiveError, match="unsafe path"):
        extract_members(archive, ["ok.geojson"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_tar_gz_bomb_is_refused_before_it_is_inflated(tmp_path):
    archive = make_tar(tmp_path / "bomb.tar.gz", {"zeros.geojson": bytes(20_000_000)})
    assert archive.stat().st_size * 500 < 20_000_000
    with pytest.raises(ArchiveError, match="possible decompression bomb") as err:
        list_members(archive)
    assert err.value.where == "bomb.tar.gz"


def test_a_truncated_tar_gz_is_reported(tmp_path):
    payload = bytes(range(256)) * 400
    archive = make_tar(tmp_path / "cut.tar.gz", {"a.geojson": payload})
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(ArchiveError, match="cut.tar.gz"):
        extract_members(archive, list_members(archive), tmp_path / "out")
    (tmp_path / "broken.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        list_members(tmp_path / "broken.tgz")
