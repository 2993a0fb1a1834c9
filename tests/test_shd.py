"""SHD loader: files written here in the published layout, read back, binned, downloaded from a local server."""

import functools
import gzip
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dcls_lib.data.shd import SHD, bin_spikes, download_shd, pad_collate, validate_shd_file
from dcls_lib.snn.train import main

KEYS = [f"{lang}-{digit}" for lang in ("english", "german") for digit in range(10)]


def write_shd(path: Path, times, units, labels, time_dtype=np.float16) -> Path:
    """An SHD file in the published layout: vlen times (s) and units (uint16), labels, extra/..."""
    n = len(labels)
    with h5py.File(path, "w") as f:
        f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.dtype(time_dtype)))
        f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.dtype("uint16")))
        for i in range(n):
            f["spikes/times"][i] = np.asarray(times[i], dtype=time_dtype)
            f["spikes/units"][i] = np.asarray(units[i], dtype="uint16")
        f.create_dataset("labels", data=np.asarray(labels, dtype="uint16"))
        f.create_dataset("extra/speaker", data=np.arange(n, dtype="uint16") % 3)
        f.create_dataset("extra/keys", data=np.array([k.encode() for k in KEYS]))
        f.create_dataset("extra/meta_info/gender", data=np.array([b"female", b"male", b"female"]))
        f.create_dataset("extra/meta_info/age", data=np.array([25, 31, 47], dtype="uint16"))
        f.create_dataset("extra/meta_info/body_height", data=np.array([168, 181, 172], dtype="uint16"))
    return path


SAMPLES = {
    "times": [[0.5, 0.5, 0.515, 0.5625, 0.75], [0.125, 0.25], [1.0]],
    "units": [[0, 7, 7, 699, 350], [3, 4], [12]],
    "labels": [19, 0, 7],
}


@pytest.fixture
def shd_root(tmp_path):
    root = tmp_path / "shd"
    root.mkdir()
    write_shd(root / "shd_train.h5", **SAMPLES)
    write_shd(root / "shd_test.h5", **{k: v[:2] for k, v in SAMPLES.items()})
    return root


@pytest.mark.parametrize("time_dtype", [np.float16, np.float64])
def test_reads_back_what_was_written(tmp_path, time_dtype):
    write_shd(tmp_path / "shd_train.h5", **SAMPLES, time_dtype=time_dtype)
    data = SHD(tmp_path, "train", dt=0.01)
    assert len(data) == 3 and data.classes[19] == "german-9" and data.n_inputs == 700
    frames, label = data[0]
    assert label == 19 and frames.shape == (700, 26)  # from 0.5 s to 0.75 s in 10 ms frames
    assert frames.sum() == 5
    assert frames[0, 0] == 1 and frames[7, 0] == 1 and frames[7, 1] == 1
    assert frames[699, 6] == 1 and frames[350, 25] == 1


def test_channel_pooling_and_absolute_time(shd_root):
    data = SHD(shd_root, "train", dt=0.1, channel_pool=5, from_first_spike=False)
    frames, _ = data[0]
    assert frames.shape == (140, 8)
    assert frames[1, 5] == 2, "units 7 and 7 at 0.5 and 0.515 s share channel group 1 and frame 5"
    assert frames[0, 5] == 1 and frames[139, 5] == 1 and frames[70, 7] == 1
    assert data[1][0].shape == (140, 3)


def test_pad_collate_stacks_samples_of_different_lengths(shd_root):
    data = SHD(shd_root, "train", channel_pool=5)
    x, y = pad_collate([data[0], data[1], data[2]])
    assert x.shape == (3, 140, 26) and y.tolist() == [19, 0, 7]
    assert torch.equal(x[1, :, data[1][0].shape[1]:], torch.zeros(140, 26 - data[1][0].shape[1]))
    assert x[2].sum() == 1


def test_bin_spikes_checks_its_input():
    with pytest.raises(ValueError, match="units must lie"):
        bin_spikes(np.array([0.1]), np.array([700]))
    with pytest.raises(ValueError, match="one length"):
        bin_spikes(np.array([0.1, 0.2]), np.array([1]))
    assert bin_spikes(np.array([]), np.array([]), channel_pool=5).shape == (140, 1)


def test_bad_files_are_named(tmp_path):
    with h5py.File(tmp_path / "shd_train.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(2, dtype="uint16"))
    with pytest.raises(ValueError, match="missing spikes/times, spikes/units"):
        SHD(tmp_path, "train")
    (tmp_path / "shd_test.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="shd_test.h5: not a readable HDF5 file"):
        validate_shd_file(tmp_path / "shd_test.h5")
    with pytest.raises(FileNotFoundError, match="download=True"):
        SHD(tmp_path / "elsewhere", "train")
    with pytest.raises(ValueError, match="split"):
        SHD(tmp_path, "valid")
    write_shd(tmp_path / "shd_train.h5", [[0.1]], [[1]], [25])
    with pytest.raises(ValueError, match="record 0 has label 25"):
        SHD(tmp_path, "train")


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _publish_gz(www: Path, source: Path, name: str, md5sums: bool = True) -> str:
    packed = www / f"{name}.gz"
    packed.write_bytes(gzip.compress(source.read_bytes()))
    digest = hashlib.md5(packed.read_bytes()).hexdigest()
    if md5sums:
        (www / "md5sums.txt").write_text(f"{digest}  {name}.gz\n0123456789abcdef0123456789abcdef  other.gz\n")
    return digest


def test_download_from_a_local_server_checks_md5_and_unpacks(tmp_path, server):
    www, url = server
    source = write_shd(tmp_path / "source.h5", **SAMPLES)
    _publish_gz(www, source, "shd_train.h5")
    root = tmp_path / "cache"
    path = download_shd("train", root, base_url=url, progress=False)
    assert path == root / "shd_train.h5" and path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["shd_train.h5"], "no temporary files left"
    (www / "shd_train.h5.gz").unlink()
    assert download_shd("train", root, base_url=url, progress=False) == path, "cached files are not fetched again"
    assert len(SHD(root, "train")) == 3


def test_download_with_a_wrong_checksum_leaves_nothing_behind(tmp_path, server):
    www, url = server
    source = write_shd(tmp_path / "source.h5", **SAMPLES)
    _publish_gz(www, source, "shd_test.h5")
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="does not match the published"):
        download_shd("test", root, base_url=url, md5="0" * 32, progress=False)
    assert list(root.iterdir()) == []
    with pytest.raises(OSError, match="could not download"), pytest.warns(UserWarning, match="not verified"):
        download_shd("train", root, base_url=url, progress=False)
    assert list(root.iterdir()) == []


def test_download_of_a_zip_from_a_file_url_without_md5sums(tmp_path):
    www = tmp_path / "mirror"
    www.mkdir()
    source = write_shd(tmp_path / "source.h5", **SAMPLES)
    with zipfile.ZipFile(www / "shd_train.h5.zip", "w") as zf:
        zf.write(source, "shd_train.h5")
    with pytest.warns(UserWarning, match="not verified"):
        path = download_shd("train", tmp_path / "cache", base_url=www.as_uri() + "/", archive="zip", progress=False)
    assert path.read_bytes() == source.read_bytes()
    with pytest.raises(ValueError, match="archive"):
        download_shd("train", tmp_path / "cache2", archive="rar")


def test_dataset_downloads_when_asked(tmp_path, server):
    www, url = server
    _publish_gz(www, write_shd(tmp_path / "source.h5", **SAMPLES), "shd_train.h5")
    data = SHD(tmp_path / "cache", "train", download=True, base_url=url)
    assert [data[i][1] for i in range(3)] == [19, 0, 7]


def test_command_line_trains_on_shd_files(shd_root, tmp_path):
    """The published SHD settings, one epoch on the small files (one thread: tiny batches)."""
    out = tmp_path / "shd.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["--data", "shd", "--shd-root", str(shd_root), "--runs", "learned", "--epochs", "1",
                     "--device", "cpu", "--no-progress", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["data"].startswith("SHD (3 train / 2 test")
    assert run["config"]["n_hidden"] == 256 and run["config"]["max_delay"] == 25
    assert len(run["delays_final"]) == 3 and len(run["delays_final"][0][0]) == 140
