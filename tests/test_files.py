"""dcls_lib.files: a write is complete or absent, with the permissions a plain write would give."""

import os

import pytest

from dcls_lib.files import DownloadError, atomic_path, fetch, write_json


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_replaces_the_file_with_a_plain_files_permissions(tmp_path):
    path = write_json(tmp_path / "sub" / "a.json", {"x": 1})
    assert path.read_text() == '{\n "x": 1\n}\n'
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    write_json(path, {"x": 2})
    assert '"x": 2' in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["a.json"], "no temporary file is left behind"


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_else(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert '"x": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_fetch_copies_a_file_url_and_names_the_url_when_it_fails(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"abc" * 1000)
    copied = fetch(source.as_uri(), tmp_path / "out" / "copy.bin", progress=False)
    assert copied.read_bytes() == source.read_bytes()

    def refuse(path):
        raise ValueError(f"bad checksum for {path.name}")

    with pytest.raises(ValueError, match="checksum"):
        fetch(source.as_uri(), tmp_path / "refused.bin", progress=False, verify=refuse)
    missing = (tmp_path / "missing.bin").as_uri()
    with pytest.raises(DownloadError, match="missing.bin"):
        fetch(missing, tmp_path / "never.bin", progress=False)
    assert not (tmp_path / "refused.bin").exists() and not (tmp_path / "never.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source.bin"]
