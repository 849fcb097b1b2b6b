from pipeline.text_table import aligned, printable


def test_columns_are_padded_and_every_cell_is_one_printable_line():
    lines = aligned([["a", "bb", "name"], ["ccc", "d\te", "x\ny"]])
    assert lines == ["a    bb   name", "ccc  d?e  x?y"]
    assert printable("\x1b[2Jok") == "?[2Jok" and printable(3.5) == "3.5"
