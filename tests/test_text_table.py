from pipeline.text_table import aligned, escaped, file_size


def test_columns_are_padded_and_every_cell_is_one_printable_line_that_reads_back():
    lines = aligned([["a", "bb", "name"], ["ccc", "d\te", "x\ny"], ["\x1b[2Jok", 3.5, "\\"]])
    assert lines == ["a          bb    name", "ccc        d\\te  x\\ny", "\\x1b[2Jok  3.5   \\\\"]


def test_file_sizes_read_in_megabytes_then_gigabytes_then_terabytes():
    sizes = (0, 6_600_000, 999_940_000, 999_999_999, 7_740_000_000)
    assert [file_size(n) for n in sizes] == ["0.0 MB", "6.6 MB", "999.9 MB", "1.00 GB", "7.74 GB"]
    assert [file_size(n) for n in (999.99e9, 999.995e9, 6.02112e21)] == ["999.99 GB", "1.00 TB", "6,021,120,000.00 TB"]


def test_escaped_is_one_printable_line_that_reads_back():
    import codecs
    import os
    names = ["plain é.png", "a\tb\nc.png", "back\\slash", "\x1b[31m", os.fsdecode(b"bad\xff.png"), "x\u2028y"]
    assert [escaped(n) for n in names] == ["plain é.png", "a\\tb\\nc.png", "back\\\\slash", "\\x1b[31m",
                                           "bad\\xff.png", "x\\xe2\\x80\\xa8y"]
    assert all(escaped(n).isprintable() for n in names)
    assert [os.fsdecode(codecs.escape_decode(escaped(n).encode())[0]) for n in names] == names
