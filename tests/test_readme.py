"""The README's runnable example stays true."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_language_example_runs_and_prints_what_it_says():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(b for b in blocks if "tp.Program()" in b)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    res, s, g, out = scope["res"], scope["s"], scope["g"], scope["out"]
    # The comments in the README: 0.75 exactly, ZHat + 0.5 Z[x], closed form,
    # and a finite-width value within a few n^-1/2 (per-seed sd ~ 0.03 here).
    assert float(res[s]) == 0.75
    assert repr(res[g]).endswith("= ZHat[h4] + 0.5*Z[x]")
    assert res.estimate(s).method == "closed form"
    assert abs(float(out[s]) - 0.75) < 0.1
