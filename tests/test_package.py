import tensorprograms as tp


def test_version_is_a_string():
    assert tp.__version__.count(".") == 2
