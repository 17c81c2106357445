"""The predictions evaluate keeps are the ones its tallies counted; the table's schema."""

from __future__ import annotations

import numpy as np
from gla.analyze import adjust, cell, predictions, schema
from gla.analyze.synthetic import planted_world, zipf_prior

C = 9


def test_evaluate_keeps_the_predictions_its_tallies_count():
    pi = zipf_prior(C, seed=0)
    fit = planted_world(C, 20, pi, seed=1, signal=2.0)
    ev = planted_world(C, 90, pi, seed=2, signal=2.0)
    fitted = cell.fit_priors(fit.zs, fit.labels, C)
    y = ev.labels.copy()
    y[::7] = -1  # unknown labels are skipped by both
    kept: dict = {}
    chunks = [(ev.zs[a : a + 100], ev.ft[a : a + 100], y[a : a + 100]) for a in range(0, len(y), 100)]
    tallies = cell.evaluate(chunks, fitted, predictions=kept)
    assert set(kept) == set(tallies) == set(adjust.methods_for(True))
    yl = y[y >= 0]
    ref = adjust.apply_methods(ev.zs[y >= 0], ev.ft[y >= 0], pi_s=fitted.pi_s, pi_p=fitted.pi_p)
    for m, parts in kept.items():
        p = np.concatenate(parts)
        np.testing.assert_array_equal(p, ref[m].argmax(axis=1))
        np.testing.assert_array_equal(np.bincount(yl[p == yl], minlength=C), tallies[m].correct)
        np.testing.assert_array_equal(np.bincount(p, minlength=C), tallies[m].predicted)


def test_cell_frame_schema_and_stable_hash():
    ids = [f"img/{i}.jpg" for i in range(5)]
    df = predictions.cell_frame("m", "d", "gla", ids, np.arange(5), {"zs": np.arange(5), "gla": np.zeros(5)})
    schema.check({"predictions": df})
    assert df.height == 10
    # blake2b-64 of "img/0.jpg", little-endian: fixed forever (runs of other versions pair).
    import hashlib

    want = int.from_bytes(hashlib.blake2b(b"img/0.jpg", digest_size=8).digest(), "little")
    assert df["sample_hash"][0] == want
    assert len(set(predictions.sample_hashes(ids).tolist())) == 5
