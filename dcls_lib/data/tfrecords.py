"""TFRecord files without TensorFlow: framing with checked CRCs, and ``tf.train.Example`` records.

A TFRecord file is a sequence of records, each framed as::

    uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

(little endian), where ``masked_crc32c(x) = rotate_right(crc32c(x), 15) + 0xa282ead8``.  Every CRC
is checked: a damaged or truncated file raises :class:`TFRecordError` naming the file and the
record.  Records of image datasets hold a serialised ``tf.train.Example`` protobuf; the message
classes come from the ``tfrecord`` package (``tfrecord.example_pb2``), so TensorFlow is not needed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Iterator, Union

import crc32c
from tfrecord import example_pb2

from ..files import write_bytes_atomic

PathLike = Union[str, os.PathLike]

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class TFRecordError(ValueError):
    """A TFRecord file or record that cannot be read as written: the message names file and record."""


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data`` (the CRC rotated right by 15 bits plus a constant)."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record as it is stored in a file: length, its CRC, the data, the data's CRC."""
    length = struct.pack("<Q", len(data))
    return length + _FOOTER.pack(masked_crc32c(length)) + bytes(data) + _FOOTER.pack(masked_crc32c(data))


def write_tfrecord(path: PathLike, records: Iterable[bytes]) -> Path:
    """Write ``records`` to a TFRecord file atomically (a temporary file renamed into place)."""
    return write_bytes_atomic(path, (frame_record(data) for data in records))


def _truncated(path: Path, index: int, part: str) -> TFRecordError:
    """The error for a file that ends inside record ``index``'s ``part`` ("header" or "data")."""
    return TFRecordError(f"{path}: record {index}: file ends inside the record {part} (truncated file)")


def _read_header(file, path: Path, index: int) -> int:
    """The data length of the record starting at the file's position, its length CRC checked."""
    header = file.read(_HEADER.size)
    if len(header) != _HEADER.size:
        raise _truncated(path, index, "header")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(f"{path}: record {index}: length CRC mismatch (corrupted file or not a TFRecord file)")
    return length


def _read_data(file, path: Path, index: int, length: int) -> bytes:
    data = file.read(length)
    footer = file.read(_FOOTER.size)
    if len(data) != length or len(footer) != _FOOTER.size:
        raise _truncated(path, index, "data")
    if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
        raise TFRecordError(f"{path}: record {index}: data CRC mismatch (corrupted record)")
    return data


def iter_tfrecord(path: PathLike) -> Iterator[bytes]:
    """The records of a file in order, every CRC checked."""
    path = Path(path)
    with open(path, "rb") as file:
        index = 0
        while file.peek(1):
            yield _read_data(file, path, index, _read_header(file, path, index))
            index += 1


def index_tfrecord(path: PathLike) -> list[tuple[int, int]]:
    """(offset, length) of each record's header, for random access; reads headers only (length CRCs checked)."""
    path = Path(path)
    size = path.stat().st_size
    entries = []
    with open(path, "rb") as file:
        offset = 0
        while offset < size:
            length = _read_header(file, path, len(entries))
            end = offset + _HEADER.size + length + _FOOTER.size
            if end > size:
                raise _truncated(path, len(entries), "data")
            entries.append((offset, length))
            offset = end
            file.seek(offset)
    return entries


def read_tfrecord_at(path: PathLike, offset: int, index: int) -> bytes:
    """The data of the record whose header starts at ``offset`` (record number ``index``, for messages)."""
    path = Path(path)
    with open(path, "rb") as file:
        file.seek(offset)
        return _read_data(file, path, index, _read_header(file, path, index))


def verify_tfrecord(path: PathLike) -> int:
    """Check every CRC of a file; returns the number of records."""
    return sum(1 for _ in iter_tfrecord(path))


def encode_example(features: dict) -> bytes:
    """A serialised ``tf.train.Example``: ``bytes`` values become bytes lists, ``int`` values int64 lists."""
    example = example_pb2.Example()
    for key, value in features.items():
        feature = example.features.feature[key]
        if isinstance(value, (bytes, bytearray)):
            feature.bytes_list.value.append(bytes(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            feature.int64_list.value.append(value)
        else:
            raise TypeError(f"feature {key!r}: expected bytes or int, got {type(value).__name__}")
    return example.SerializeToString()


def decode_example(data: bytes) -> dict:
    """The features of a serialised ``tf.train.Example`` as {name: list of values}."""
    example = example_pb2.Example.FromString(bytes(data))
    features = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        features[key] = list(getattr(feature, kind).value) if kind else []
    return features
