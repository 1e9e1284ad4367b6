"""Per-seed orders beside the median curve's in the rates table (analysis/rates.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from convergence.analysis.rates import _rate_rows


def test_topic_and_all_rows_list_each_seeds_accepted_order():
    steps = np.array([16, 32, 64, 128, 256])
    rows = []
    # seeds 1 and 2 on a clean n^-2 curve (orders exactly 2), seed 3 pre-asymptotic: its
    # local slopes are 1, 3, 1, 3, which no rule accepts
    curves = {1: 1.0 * steps ** -2.0, 2: 3.0 * steps ** -2.0,
              3: np.array([1.0, 0.5, 0.0625, 0.03125, 0.00390625])}
    for seed, d in curves.items():
        for n, v in zip(steps, d, strict=True):
            rows.append({"topic": "t", "sampler": "heun", "schedule": "karras", "cfg": 1.0,
                         "prompt": "p", "seed": seed, "steps": int(n), "value": float(v),
                         "ref_hash": ""})
    out = pd.DataFrame(_rate_rows(pd.DataFrame(rows), "rmse", "exact-denoised", "steps", {}, 0))
    group = out[out.level == "group"].set_index("seed")
    assert group.asymptotic.to_dict() == {1: True, 2: True, 3: False}
    assert (group.seed_orders == "").all()
    for level in ("topic", "all"):
        text = out[out.level == level].seed_orders.iloc[0]
        assert text == "2.00,2.00 (2 of 3 accepted)", text
