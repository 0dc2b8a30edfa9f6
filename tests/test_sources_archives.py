"""Safe extraction: hostile archive members are refused, only what is asked for is written."""

import hashlib
import stat
import zipfile

import pytest

from pvlake.sources.archives import ArchiveError, extract_members, list_members, safe_relpath


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
