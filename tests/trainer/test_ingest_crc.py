"""The ingest thread's record-batch CRC check runs in C: kafka-python falls back to pure Python without the
`crc32c` package, which cost 9% of a training rank's samples (pyproject.toml)."""

from __future__ import annotations

import zlib

from kafka.record import util


def test_kafka_python_checks_crcs_with_the_c_implementation() -> None:
    assert util.crc32c_c is not None, "install crc32c (pyproject.toml): kafka-python would check CRCs in Python"
    data = zlib.compress(b"unirec" * 1000)
    assert util.calc_crc32c(data) == util.crc32c_py(data)
