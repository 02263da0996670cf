"""Tables shown by chapters: formatting, escaping, shape errors."""

import pytest

from dynbook.book import show


def test_table_formats_floats_and_escapes_pipes():
    text = show.table(["n", "ratio", "note"], [(1, 0.123456, "a|b"), (2, 1e-9, "x")]).data
    assert text.splitlines()[0] == "| n | ratio | note |"
    assert "| 1 | 0.123 | a\\|b |" in text and "| 2 | 1e-09 | x |" in text
    assert show.table(["x"], [(2.0,)], fmt=".2f").data.endswith("| 2.00 |")


def test_table_refuses_ragged_rows():
    with pytest.raises(ValueError, match="2 cells, the header 1"):
        show.table(["x"], [(1, 2)])
