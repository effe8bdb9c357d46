#!/usr/bin/env python3
"""Writes src/domain/testdata/percentiles.json: age lists and numpy's answers.

Run once by hand (needs numpy: `pip install numpy`); the Rust unit test
`percentiles_match_numpy_on_recorded_vectors` reads the file, numpy is not
needed to run the tests.

    python3 scripts/percentile_vectors.py
"""
import json
import pathlib
import random

import numpy as np

QUANTILES = [50, 75, 99, 0, 100, 1, 33, 66.6]
OUT = pathlib.Path(__file__).resolve().parent.parent / "src/domain/testdata/percentiles.json"


def entry(ages):
    results = []
    for q in QUANTILES:
        value = float(np.percentile(np.array(ages, dtype=np.int64), q))
        results.append({"q": q, "numpy": value, "rounded": round(value, 2)})
    return {"ages": ages, "results": results}


def main():
    rng = random.Random(20261128)
    lists = [[42], [0], [7, 30], [30, 7], [5] * 10, [99] * 1, [18] * 2000]
    for _ in range(240):
        n = rng.randint(1, 2000)
        spread = rng.choice([3, 20, 60, 120])
        base = rng.randint(0, 40)
        lists.append([base + rng.randint(0, spread) for _ in range(n)])
    for n in range(1, 40):  # every small length, where the index fractions vary most
        lists.append([rng.randint(0, 100) for _ in range(n)])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps([entry(a) for a in lists], separators=(",", ":")) + "\n")
    print(f"wrote {len(lists)} lists to {OUT} (numpy {np.__version__})")


if __name__ == "__main__":
    main()
