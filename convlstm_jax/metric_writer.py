"""Where training metrics go: `metrics.jsonl` and TensorBoard event files, written by process 0 only.

The event files are written without TensorFlow or the `tensorboard` package (neither exists on every GPU
machine): an event file is a TFRecord file of `Event` protocol buffers, and the few fields a scalar needs are
encoded here by hand (wire format: https://protobuf.dev/programming-guides/encoding/).
"""

from __future__ import annotations

import json
import pathlib
import socket
import struct
import time
from typing import Any

from convlstm_jax import io


class MetricWriter:
    """Appends one JSON object per record to `metrics.jsonl` and its numbers to a TensorBoard event file."""

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
        self._enabled = enabled
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / 'metrics.jsonl', 'a')  # noqa: SIM115 (closed in close())
        self._events = EventFileWriter(workdir / 'tensorboard')

    def write(self, record: dict[str, Any]) -> None:
        """`record` has 'step' and 'split'; other numbers become TensorBoard scalars named 'split/key'."""
        if not self._enabled:
            return
        record = {key: io.jsonable(value) for key, value in record.items()}
        self._jsonl.write(json.dumps(record) + '\n')
        self._jsonl.flush()
        scalars = {
            f'{record["split"]}/{key}': value
            for key, value in record.items()
            if key not in ('step', 'split')
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        }
        self._events.scalars(int(record['step']), scalars)

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._events.close()


class EventFileWriter:
    """A TensorBoard event file holding scalar summaries."""

    def __init__(self, logdir: str | pathlib.Path):
        logdir = pathlib.Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
        self._file = open(logdir / name, 'ab')  # noqa: SIM115 (closed in close())
        self._write_event(_field_bytes(3, b'brain.Event:2'))  # file_version: how readers recognize the file

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not values:
            return
        summary = b''.join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + _field_float(2, value))
            for tag, value in values.items()
        )
        self._write_event(_field_varint(2, step) + _field_bytes(5, summary))

    def close(self) -> None:
        self._file.close()

    def _write_event(self, fields: bytes) -> None:
        event = _field_double(1, time.time()) + fields  # Event.wall_time, then step / summary / file_version
        header = struct.pack('<Q', len(event))
        self._file.write(header + struct.pack('<I', _masked_crc(header)) + event)
        self._file.write(struct.pack('<I', _masked_crc(event)))
        self._file.flush()


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack('<d', value)


def _field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack('<f', value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    """The CRC-32C of `data`, masked as TFRecord files store it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
