"""The `tensorprograms tour` command runs end to end and writes its figures."""

import os

from tensorprograms import cli, tour


def test_tour_command_writes_figures(tmp_path, capsys):
    out = str(tmp_path / "figs")
    assert (
        cli.main(
            ["tour", "--out", out, "--widths", "64", "128", "--seeds", "2", "--quick"]
        )
        == 0
    )
    text = capsys.readouterr().out
    for ex in tour.EXAMPLES.values():
        assert ex().title in text
    assert "fitted slope" in text and "empirical NTK" in text
    assert os.path.getsize(os.path.join(out, "convergence.png")) > 10_000
    assert os.path.getsize(os.path.join(out, "kernels.png")) > 10_000


def test_every_example_limit_is_what_its_title_says():
    # Independent values: Catalan C_2 = 2; Narayana m_2(1/2) = 1/2 + 1/4 = 3/4.
    assert abs(float(tour.EXAMPLES["semicircle"]().limit().value) - 2.0) < 1e-12
    mp = tour.EXAMPLES["marchenko-pastur"]().limit()
    assert abs(float(mp.value) - 0.75) < 1e-12 and mp.method == "exact"
