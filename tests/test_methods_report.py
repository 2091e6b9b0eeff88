"""A methods study's table: one row per method, its training time, and each method's own paper
numbers with their sources (analysis/paper.py METHOD_NUMBERS)."""

from __future__ import annotations

import math

import pandas as pd

from analysis import paper, tables


def _df():
    rows = []
    for i, (method, secs, values) in enumerate([("flow_matching", 10.0, {1: 0.8, 2: 0.4}),
                                                ("meanflow", 20.0, {1: 0.1, 2: 0.2})]):
        for seed in (0, 1):
            rid = f"r{i}{seed}"
            for nfe, value in values.items():
                rows.append({"run_id": rid, "trial_id": f"t{i}{seed}", "status": "finished", "error": "", "seed": seed,
                             "train_s": secs + seed, "method.name": method, "metric": "swd", "nfe": nfe,
                             "value": value + 0.01 * seed, "phase": "final", "num_samples": 100.0})
    return pd.DataFrame(rows)


def test_method_rows_carry_train_time_and_their_own_paper_numbers():
    t = tables.metric_table(_df(), "swd", ["method.name"])
    assert t.header() == ["method.name", "seeds ok", "train s", "NFE 1", "Δ vs flow_matching (NFE 1)", "NFE 2",
                          "Δ vs flow_matching (NFE 2)", paper.METHOD_COLUMN]
    assert t.train_s == {("flow_matching",): 10.5, ("meanflow",): 20.5}
    mf = paper.METHOD_NUMBERS["meanflow"]
    assert t.method_paper == {("meanflow",): mf.cell()}  # no published number: no cell
    md = t.to_markdown()
    assert "| meanflow | 2/2 | 20 | **0.105 ± 0.0071 (n=2), 95% CI \\[0.0415, 0.1685\\]** |" in md
    assert "3.43 / 2.93" in md and mf.source in md  # the value and where it comes from
    assert "flow\\_matching | 2/2 | 10 |" in md and md.count("| — |") == 1


def test_method_numbers_render_missing_values_as_dashes():
    n = paper.MethodNumbers(1.72, None, "XL/2", None, "somewhere")
    assert n.cell() == "1.72 / — (XL/2); CIFAR-10 —"
    assert all(math.isfinite(v) for m in paper.METHOD_NUMBERS.values()
               for v in (m.imagenet_1nfe, m.imagenet_2nfe, m.cifar10) if v is not None)
