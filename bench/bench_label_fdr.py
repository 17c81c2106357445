"""Label-issue flags through `gla import` + `gla analyze --label-issues`: their false
discovery proportion (FDP) and recall over seeds, on planted worlds with flipped labels.

Each world: a labelled fit split (the clean reference, cross-fitted), an eval split with a
share of its labels flipped uniformly to another class, training counts for π_s. The
flags are Benjamini–Hochberg at α on conformal p-values, so the mean FDP over seeds should
stay at or below α (BH gives π0·α when the clean rows are exchangeable with the reference).
Worlds: balanced; a long-tailed eval split; classes of unequal difficulty; both; 50
classes; 20 % noise.

    .venv/bin/python bench/bench_label_fdr.py [--seeds 12] [--alpha 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gla.analyze import synthetic  # noqa: E402
from gla.pipeline import publication  # noqa: E402
from gla.pipeline.cli import main as gla  # noqa: E402

WORLDS = {
    "balanced": {},
    "long-tailed eval": {"eval_prior": ("zipf", 1.5)},
    "unequal difficulty": {"hetero": True},
    "long-tailed + unequal": {"eval_prior": ("zipf", 1.5), "hetero": True},
    "50 classes": {"C": 50, "n_eval": 5000},
    "20 % noise": {"rate": 0.2},
}


def one(root: Path, seed: int, alpha: float, C: int = 10, per_fit: int = 20, n_eval: int = 3000,
        rate: float = 0.1, eval_prior=None, hetero: bool = False) -> tuple[float, float, int]:
    pi_s = synthetic.zipf_prior(C, 1.0, seed + 3)
    sig = {"signal": 2.0, "ft_signal": 2.0}
    fit = synthetic.planted_world(C, per_fit, seed=seed, pi_s=pi_s, **sig)
    target = np.full(C, 1 / C) if eval_prior is None else synthetic.zipf_prior(C, eval_prior[1], seed + 77)
    ev = synthetic.shifted_world(fit, target, n_eval, seed=seed + 100, **sig)
    arrays = {"val": [fit.labels, fit.zs.copy(), fit.ft.copy()], "test": [ev.labels, ev.zs.copy(), ev.ft.copy()]}
    if hetero:  # class-dependent difficulty: each class's logits scaled by its own factor
        scale = np.random.default_rng(seed + 5).uniform(0.5, 1.5, C).astype(np.float32)
        for y, zs, ft in arrays.values():
            zs *= scale[y][:, None]
            ft *= scale[y][:, None]
    noisy, flipped = synthetic.flip_labels(ev.labels, rate, C, seed)
    arrays["test"][0] = noisy
    store = root / "S"
    args = ["--store", str(store), "--model", "m", "--dataset", "d"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for split, arrs in arrays.items():
            files = []
            for name, a in zip(("labels", "zs", "ft"), arrs, strict=True):
                np.save(root / f"{split}-{name}.npy", a)
                files.append(f"--{name}={root}/{split}-{name}.npy")
            assert gla(["import", *args, "--split", split, *files]) == 0
        np.save(root / "counts.npy", synthetic.label_counts(pi_s, 5000))
        assert gla(["import", "--store", str(store), "--dataset", "d", "--train-counts", str(root / "counts.npy")]) == 0
        assert gla(["analyze", "--store", str(store), "--label-issues", "--fdr", str(alpha), "--quiet"]) == 0
    issues = pl.read_parquet(publication.latest_dir(store) / "label_issues.parquet").filter(pl.col("flagged"))
    flagged = np.zeros(noisy.size, dtype=bool)
    flagged[[int(s.rsplit("-", 1)[1]) for s in issues["sample_id"]]] = True
    fdp = float((flagged & ~flipped).sum() / max(flagged.sum(), 1))
    return fdp, float((flagged & flipped).sum() / flipped.sum()), int(flagged.sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--alpha", type=float, default=0.1)
    a = ap.parse_args()
    print(f"label-issue flags at α = {a.alpha}, {a.seeds} seeds per world (fit split: 20 per class, "
          "the clean reference)")
    print(f"  {'world':24s} {'mean FDP':>9s} {'max FDP':>8s} {'mean recall':>12s} {'runs with no flag':>18s}")
    for name, kw in WORLDS.items():
        res = []
        for seed in range(a.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                res.append(one(Path(tmp), seed, a.alpha, **kw))
        fdp, rec, n = (np.array(x) for x in zip(*res, strict=True))
        print(f"  {name:24s} {fdp.mean():9.3f} {fdp.max():8.3f} {rec.mean():12.3f} {int((n == 0).sum()):18d}")
    print(f"command: .venv/bin/python bench/bench_label_fdr.py --seeds {a.seeds} --alpha {a.alpha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
