"""ClickMe shards: TFRecord framing and CRCs, records, the published preprocessing, downloads."""

import functools
import io
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tfrecord
import torch
from PIL import Image

from dcls_lib.data.clickme import (
    ClickMe,
    clickme_shards,
    clickme_val,
    download_clickme_val,
    encode_clickme_record,
    gaussian_blur,
    gaussian_kernel,
    preprocess_human_map,
    preprocess_image,
    resize_bilinear,
    write_clickme_shard,
)
from dcls_lib.data.tfrecords import TFRecordError, frame_record, iter_tfrecord, masked_crc32c, verify_tfrecord, write_tfrecord


def samples(count, seed=0):
    """Smooth random images and click maps (JPEG-friendly), with labels."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        coarse = rng.integers(0, 256, (3, 16, 16)).astype(np.float32)
        image = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None], size=(256, 256), mode="bilinear")[0]
        heat = np.zeros((256, 256), np.uint8)
        r, c = rng.integers(20, 236, 2)
        heat[r - 20 : r + 20, c - 20 : c + 20] = 255
        out.append((image.permute(1, 2, 0).round().clamp(0, 255).byte().numpy(), heat, int(rng.integers(0, 1000))))
    return out


def jpeg_decode(data):
    with Image.open(io.BytesIO(data)) as picture:
        return np.array(picture)


# --- framing ---------------------------------------------------------------------------------------


def test_masked_crc_matches_the_standard_and_the_tfrecord_package():
    import crc32c

    assert crc32c.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    for data in (b"", b"123456789", bytes(range(256)) * 3):
        assert masked_crc32c(data).to_bytes(4, "little") == tfrecord.TFRecordWriter.masked_crc(data)


def test_our_shards_read_by_the_tfrecord_package(tmp_path):
    data = samples(3)
    path = write_clickme_shard(tmp_path / "val-0.tfrecords", data)
    read = list(tfrecord.tfrecord_loader(str(path), None, {"image": "byte", "heatmap": "byte", "label": "int"}))
    assert [int(r["label"][0]) for r in read] == [d[2] for d in data]
    np.testing.assert_array_equal(jpeg_decode(bytes(read[1]["heatmap"])), ClickMe(path).raw(1)[1])
    assert not list(tmp_path.glob(".*part"))  # the temporary file was renamed


def test_shards_written_by_the_tfrecord_package_read_back(tmp_path):
    data = samples(4, seed=1)
    path = tmp_path / "val-3.tfrecords"
    writer = tfrecord.TFRecordWriter(str(path))
    jpegs = []
    for image, heat, label in data:
        pair = []
        for array in (image, heat):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=90)
            pair.append(buffer.getvalue())
        jpegs.append(pair)
        writer.write({"image": (pair[0], "byte"), "heatmap": (pair[1], "byte"), "label": (label, "int")})
    writer.close()

    dataset = ClickMe(tmp_path)
    assert len(dataset) == 4 and dataset.image_ids == [f"val-3.tfrecords#{i}" for i in range(4)]
    for i, (image_jpeg, heat_jpeg) in enumerate(jpegs):
        image, heat, label = dataset.raw(i)
        np.testing.assert_array_equal(image, jpeg_decode(image_jpeg))
        np.testing.assert_array_equal(heat, jpeg_decode(heat_jpeg))
        assert label == data[i][2]
    image, label, human = dataset[2]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert human.shape == (224, 224) and human.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.max() > 0.5  # [0, 1], as ToTensor gives
    assert label == data[2][2]


def corrupt(path, position, xor=0xFF):
    raw = bytearray(path.read_bytes())
    raw[position] ^= xor
    path.write_bytes(bytes(raw))


def record_sizes(path):
    return [len(frame_record(r)) for r in iter_tfrecord(path)]


def test_corrupted_record_names_file_and_record(tmp_path):
    path = write_clickme_shard(tmp_path / "val-0.tfrecords", samples(4))
    sizes = record_sizes(path)
    corrupt(path, sum(sizes[:2]) + 12 + 100)  # a byte inside record 2's data
    dataset = ClickMe(path)  # the index reads headers only
    dataset[1]
    with pytest.raises(TFRecordError, match=rf"{path}: record 2: data CRC mismatch"):
        dataset[2]
    with pytest.raises(TFRecordError, match="record 2"):
        verify_tfrecord(path)


def test_corrupted_length_and_truncated_file(tmp_path):
    path = write_clickme_shard(tmp_path / "a.tfrecords", samples(3))
    sizes = record_sizes(path)
    corrupt(path, sizes[0] + 2)  # record 1's length field
    with pytest.raises(TFRecordError, match=rf"{path}: record 1: length CRC mismatch"):
        ClickMe(path)
    short = write_clickme_shard(tmp_path / "b.tfrecords", samples(3))
    short.write_bytes(short.read_bytes()[:-10])
    with pytest.raises(TFRecordError, match=r"record 2: .*truncated"):
        ClickMe(short)


def test_records_that_are_not_clickme_examples(tmp_path):
    not_example = write_tfrecord(tmp_path / "x.tfrecords", [b"\xff\xff not a protobuf"])
    with pytest.raises(TFRecordError, match=rf"{not_example}: record 0: not a tf.train.Example"):
        ClickMe(not_example)[0]
    image, heat, label = samples(1)[0]
    gray_image = encode_clickme_record(np.stack([heat] * 3, -1), heat, label)
    swapped = write_tfrecord(tmp_path / "y.tfrecords", [gray_image, encode_clickme_record(image, heat, 7)])
    ClickMe(swapped)[0]
    from dcls_lib.data.tfrecords import decode_example, encode_example

    features = decode_example(gray_image)
    no_label = encode_example({"image": features["image"][0], "heatmap": features["heatmap"][0]})
    rgb_heatmap = encode_example({"image": features["image"][0], "heatmap": features["image"][0], "label": 3})
    bad = write_tfrecord(tmp_path / "z.tfrecords", [no_label, rgb_heatmap])
    with pytest.raises(TFRecordError, match=r"record 0: feature 'label' missing"):
        ClickMe(bad)[0]
    with pytest.raises(TFRecordError, match=r"record 1: heatmap: expected a L JPEG"):
        ClickMe(bad)[1]


# --- preprocessing -----------------------------------------------------------------------------------


def tf_bilinear(image, size):
    """tf.image.resize(method="bilinear") of a (H, W) array, written from TensorFlow's half-pixel rule."""

    def axis(in_size):
        position = (np.arange(size) + 0.5) * (in_size / size) - 0.5
        low = np.floor(position)
        return np.maximum(low, 0).astype(int), np.minimum(np.ceil(position), in_size - 1).astype(int), position - low

    (y0, y1, wy), (x0, x1, wx) = axis(image.shape[0]), axis(image.shape[1])
    top = image[y0][:, x0] + (image[y0][:, x1] - image[y0][:, x0]) * wx
    bottom = image[y1][:, x0] + (image[y1][:, x1] - image[y1][:, x0]) * wx
    return top + (bottom - top) * wy[:, None]


def tf_same_blur(image, kernel):
    """tf.nn.conv2d(image, kernel, 1, "SAME") for a 2-D image: cross-correlation, zero padding, extra after."""
    kh, kw = kernel.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(image, ((top, kh - 1 - top), (left, kw - 1 - left)))
    out = np.zeros_like(image)
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * padded[i : i + image.shape[0], j : j + image.shape[1]]
    return out


def test_gaussian_kernel_is_harmonizations():
    kernel = gaussian_kernel().astype(np.float64)
    assert kernel.shape == (10, 10)
    xs, ys = np.meshgrid(np.arange(-5, 5), np.arange(4, -6, -1))  # tf.range(-(9)//2, 9//2 + 1), reversed rows
    expected = np.exp(-(xs**2 + ys**2) / 200.0)
    np.testing.assert_allclose(kernel, expected / expected.sum(), rtol=1e-6)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(kernel.argmax(), kernel.shape) == (4, 5)  # off centre, as TF's even grid puts it


def test_blur_is_tf_same_convolution():
    kernel = gaussian_kernel()
    impulse = np.zeros((64, 64), np.float32)
    impulse[30, 2] = 1.0  # near the left edge: the zero padding loses mass
    out = gaussian_blur(impulse)
    assert out.shape == (64, 64) and out.dtype == np.float32
    # out[r, c] = sum_ij k[i, j] in[r - 4 + i, c - 4 + j]: the impulse lands at k[30 - r + 4, 2 - c + 4]
    assert out[30, 2] == pytest.approx(kernel[4, 4])
    assert out[26, 0] == pytest.approx(kernel[8, 6])
    assert out[35, 7] == 0 and out[34, 6] == pytest.approx(kernel[0, 0])
    field = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    np.testing.assert_allclose(gaussian_blur(field), tf_same_blur(field.astype(np.float64), kernel.astype(np.float64)), atol=1e-5)
    # and as a 2-D convolution in torch, padded TensorFlow's way
    torch_blur = torch.nn.functional.conv2d(
        torch.nn.functional.pad(torch.from_numpy(field)[None, None], (4, 5, 4, 5)), torch.from_numpy(kernel)[None, None]
    )
    np.testing.assert_allclose(gaussian_blur(field), torch_blur[0, 0].numpy(), atol=1e-5)


def test_resize_is_tf_bilinear():
    x = np.random.default_rng(1).random((256, 256)).astype(np.float32) * 255
    for size, source in ((64, x), (224, x), (224, x[:64, :64])):
        ours = resize_bilinear(source, size)
        assert ours.shape == (size, size) and ours.dtype == np.float32
        # positions are computed in float32 (as TensorFlow does): values 0..255 agree to ~1e-5 relative
        np.testing.assert_allclose(ours, tf_bilinear(source.astype(np.float64), size), atol=1e-2)
        # torch's half-pixel bilinear without antialiasing is the same rule
        theirs = torch.nn.functional.interpolate(torch.from_numpy(source)[None, None], size=(size, size), mode="bilinear")
        np.testing.assert_allclose(ours, theirs[0, 0].numpy(), atol=1e-2)


def test_preprocessing_shapes_and_pipeline():
    image, heat, _ = samples(1)[0]
    human = preprocess_human_map(heat)
    expected = tf_bilinear(tf_same_blur(tf_bilinear(heat.astype(np.float64), 64), gaussian_kernel().astype(np.float64)), 224)
    np.testing.assert_allclose(human.numpy(), expected, atol=1e-2)
    pixels = preprocess_image(image)
    assert pixels.shape == (3, 224, 224)
    np.testing.assert_allclose(pixels[1].numpy() * 255, tf_bilinear(image[..., 1].astype(np.float64), 224), atol=1e-2)


# --- files and downloads ------------------------------------------------------------------------------


def test_shard_order_is_numeric(tmp_path):
    for i in (10, 2, 0):
        write_clickme_shard(tmp_path / f"val-{i}.tfrecords", samples(1, seed=i))
    (tmp_path / "notes.txt").write_text("not a shard")
    assert [p.name for p in clickme_shards(tmp_path)] == ["val-0.tfrecords", "val-2.tfrecords", "val-10.tfrecords"]
    assert ClickMe(tmp_path).image_ids == ["val-0.tfrecords#0", "val-2.tfrecords#0", "val-10.tfrecords#0"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tfrecords"):
        clickme_shards(tmp_path / "empty")


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served, counting GET requests."""
    root = tmp_path / "served"
    root.mkdir()
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/val-{{index}}.tfrecords", requests
    httpd.shutdown()
    httpd.server_close()


def test_download_from_a_server_once(server, tmp_path):
    root, url, requests = server
    for i in range(2):
        write_clickme_shard(root / f"val-{i}.tfrecords", samples(2, seed=i))
    cache = tmp_path / "cache"
    paths = download_clickme_val(cache, shards=range(2), url=url, progress=False)
    assert [p.read_bytes() for p in paths] == [(root / f"val-{i}.tfrecords").read_bytes() for i in range(2)]
    assert len(requests) == 2
    download_clickme_val(cache, shards=range(2), url=url, progress=False)
    assert len(requests) == 2  # complete shards are not fetched again
    assert len(clickme_val(cache, download=False)) == 4


def test_failed_or_corrupt_downloads_leave_nothing(server, tmp_path):
    root, url, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionError, match=r"could not download http://127.0.0.1:\d+/val-5.tfrecords"):
        download_clickme_val(cache, shards=[5], url=url, progress=False)
    path = write_clickme_shard(root / "val-1.tfrecords", samples(2))
    corrupt(path, 200)
    with pytest.raises(TFRecordError, match="record 0"):
        download_clickme_val(cache, shards=[1], url=url, progress=False)
    assert not any(cache.iterdir())  # no partial or unchecked file


def test_download_from_a_file_url(tmp_path):
    source = tmp_path / "mirror"
    write_clickme_shard(source / "val-0.tfrecords", samples(1))
    paths = download_clickme_val(tmp_path / "cache", shards=[0], url=source.as_uri() + "/val-{index}.tfrecords", progress=False)
    assert paths[0].read_bytes() == (source / "val-0.tfrecords").read_bytes()


def test_study_quirk_casts_the_resized_image_to_uint8(tmp_path):
    """The study's code truncated the resized image to uint8 before dividing by 255; the default keeps the fractions."""
    image = samples(1, seed=4)[0][0]
    resized = resize_bilinear(image, 224)
    clean, quirk = preprocess_image(image), preprocess_image(image, uint8=True)
    assert torch.equal(quirk, torch.from_numpy(np.floor(resized).transpose(2, 0, 1) / np.float32(255)))
    assert torch.allclose(clean, torch.from_numpy(resized.transpose(2, 0, 1) / 255)) and not torch.equal(clean, quirk)
    write_clickme_shard(tmp_path / "val-0.tfrecords", samples(2, seed=4))
    assert torch.equal(ClickMe(tmp_path, uint8_images=True)[0][0], preprocess_image(ClickMe(tmp_path).raw(0)[0], uint8=True))


def test_tfrecord_files_get_a_plain_write_mode_and_nothing_half_written(tmp_path):
    from dcls_lib.files import FILE_MODE

    path = write_tfrecord(tmp_path / "a.tfrecords", [b"one", b"two"])
    assert path.stat().st_mode & 0o777 == FILE_MODE and list(iter_tfrecord(path)) == [b"one", b"two"]

    def failing():
        yield b"three"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_tfrecord(tmp_path / "a.tfrecords", failing())
    assert list(iter_tfrecord(path)) == [b"one", b"two"] and [p.name for p in tmp_path.iterdir()] == ["a.tfrecords"]
