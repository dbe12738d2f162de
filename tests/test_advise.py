"""The batch-size advisor (launch.advise): its rows against common.theory, and the CLI on the default
config (small estimator samples to stay fast)."""
import re

import pytest

from common import theory
from common.estimate import robustness_c
from launch.advise import advise_rows, eval_frac, main, row_faults

NUM = r"[-+0-9.e]+"


def test_rows_follow_eq10_eq11_and_prop2():
    p = dict(sigma2=35.0, L=5.0, F0=2.3, c=2.0, m=8)
    rows = advise_rows(p["sigma2"], p["L"], p["F0"], p["c"], p["m"], 4000, 10, [0.0, 0.125, 0.25, 0.375])
    assert [r["delta"] for r in rows] == [0.0, 0.125, 0.25, 0.375]
    for r in rows:
        C = 10 * 4000 * (1 - r["delta"])
        assert r["C"] == pytest.approx(C)
        assert r["b_star"] == pytest.approx(theory.b_star(delta=r["delta"], C=C, **p))
        assert r["U_star"] == pytest.approx(theory.U_at_b_star(delta=r["delta"], C=C, **p))
        assert r["b_tilde"] == pytest.approx(theory.b_tilde_star(delta=r["delta"], **p))
        cand = [k for k in (int(r["b_star"]), int(r["b_star"]) + 1) if k >= 1]
        assert r["b_int"] in cand  # the integer neighbour of B* with the smaller bound (paper A, after Prop. 1)
        assert all(theory.U(r["b_int"], delta=r["delta"], C=C, **p) <= theory.U(k, delta=r["delta"], C=C, **p)
                   for k in cand)
        assert r["T"] == pytest.approx(C / (r["b_int"] * 8 * (1 - r["delta"])))
    assert [r["b_star"] for r in rows] == sorted(r["b_star"] for r in rows)
    # a non-robust rule (c = None) only has the delta = 0 row
    assert [r["delta"] for r in advise_rows(1.0, 1.0, 1.0, None, 8, 4000, 10, [0.0, 0.25])] == [0.0]


def test_each_row_takes_c_of_the_rule_set_for_its_own_f():
    """Krum at n = 8: c is 28 at f = 1 and 20 at f = 3 (Definition 1's constant is not monotone in f)."""
    def c_of(d):
        return robustness_c("krum", 8, row_faults(d, 8))[0]

    rows = advise_rows(35.0, 5.0, 2.3, c_of, 8, 4000, 10, [0.0, 0.125, 0.375])
    assert [row_faults(r["delta"], 8) for r in rows] == [1, 1, 3]
    assert [r["c"] for r in rows] == pytest.approx([28.0, 28.0, 20.0])
    for r in rows:
        C = 10 * 4000 * (1 - r["delta"])
        assert r["b_star"] == pytest.approx(theory.b_star(35.0, 5.0, 2.3, r["c"], r["delta"], 8, C))
    assert row_faults(0.49, 8) == 3 and row_faults(0.25, 8) == 2


def test_eval_frac():
    assert eval_frac("3/8") == 0.375 and eval_frac(" 0.25 ") == 0.25


def test_cli_on_the_default_config(tmp_path, capsys):
    out = tmp_path / "u.png"
    assert main(["--out", str(out), "--samples", "64", "--hvp-batch", "128"]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 1000
    consts = {k: float(re.search(rf"^{k}\s*= ({NUM})", text, re.M).group(1))
              for k in ("sigma\\^2", "L", "F0", "c")}
    sigma2, L, F0, c = consts.values()
    assert F0 == pytest.approx(2.30, abs=0.1)  # ln(10) at initialisation
    from launch.advise import compose_config, measure

    want = measure(compose_config([]), 64, 128)  # the estimators at the same sample sizes
    for printed, key in ((sigma2, "sigma2"), (L, "L"), (F0, "F0")):
        assert printed == pytest.approx(want[key], rel=1e-3), key
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(rf"^\s*(0|1/8|1/4|3/8)\s+({NUM})\s+({NUM})\s.*\s({NUM})$", text, re.M)}
    assert set(rows) == {"0", "1/8", "1/4", "3/8"}
    assert rows["3/8"][2] == pytest.approx(c, rel=1e-3)  # the default config: cm with f = 3 = 3/8 x 8
    for key, (C, b, c_row) in rows.items():
        d = eval_frac(key)
        assert c_row == pytest.approx(robustness_c("cm", 8, max(1, round(8 * d)))[0], rel=1e-3)
        assert C == pytest.approx(10 * 4000 * (1 - d), rel=1e-3)  # default: 10 epochs, 4000 samples
        assert b == pytest.approx(theory.b_star(sigma2, L, F0, c_row, d, 8, C), rel=2e-3, abs=1e-9)
    assert rows["0"][1] < rows["1/8"][1] < rows["1/4"][1] < rows["3/8"][1]


def test_cli_reports_config_errors_in_one_line(capsys):
    assert main(["--out", "unused.png", "no_such_key_group=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advise: config error:") and "\n" not in err
