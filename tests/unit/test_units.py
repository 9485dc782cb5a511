import pytest
from hypothesis import given, strategies as st

from heapballoon.errors import UsageError
from heapballoon.units import format_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("0", 0), ("512M", 512 << 20), ("1G", 1 << 30), ("1g", 1 << 30), ("4096", 4096),
    ("1.5G", 3 << 29), ("64KiB", 64 << 10), (" 2 GB ", 2 << 30), ("1T", 1 << 40),
])
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "12Q", "1..5G", "M", "1e9", "99999999999T"])
def test_parse_size_rejects_with_one_line(text):
    with pytest.raises(UsageError) as err:
        parse_size(text)
    assert "\n" not in str(err.value) and "invalid size" in str(err.value)


@given(st.integers(min_value=0, max_value=1 << 40))
def test_parse_plain_bytes_roundtrip(n):
    assert parse_size(str(n)) == n


def test_format_size():
    assert format_size(512 << 20) == "512.0 MiB"
    assert format_size(100) == "100 B"
