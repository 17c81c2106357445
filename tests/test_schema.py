"""The one result schema: every table is declared once, and the cell's output obeys it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from gla.analyze import cell, schema
from gla.analyze.synthetic import planted_world
from gla.pipeline import results


@pytest.mark.parametrize("name", list(schema.TABLES))
def test_every_table_is_well_formed(name):
    t = schema.table(name)
    assert set(t.keys) <= set(t.columns) and set(t.required) <= set(t.columns)
    assert t.keys[:2] == ("model", "dataset")  # every table joins on the cell
    e = schema.empty(name)
    assert e.height == 0 and dict(e.schema) == t.dtypes
    assert all(c.doc for c in t.columns.values())  # every column has a meaning


def test_conform_orders_casts_and_refuses_undeclared_columns():
    df = pl.DataFrame({"code": ["x"], "model": ["m"], "dataset": ["d"], "message": ["hi"]})
    out = schema.conform("warnings", df)
    assert out.columns == list(schema.columns("warnings"))
    partial = schema.frame("summary", [{"model": "m", "dataset": "d", "accuracy": float("nan"), "n": 3}])
    assert partial.schema["n"] == pl.Int64 and partial["accuracy"][0] is None  # NaN -> null
    assert partial["estimator"][0] is None  # missing columns are null
    with pytest.raises(ValueError, match="not in analyze/schema.py"):
        schema.conform("warnings", df.with_columns(pl.lit(1).alias("stray")))
    with pytest.raises(KeyError, match="unknown result table"):
        schema.table("nope")


def test_pipeline_names_derive_from_the_schema():
    assert results.TABLES == tuple(schema.TABLES)
    assert results.COLUMNS == {n: schema.required(n) for n in schema.CONTRACT}
    assert set(schema.CONTRACT) == {"summary", "per_class", "priors"}


def test_cell_tables_match_the_schema_and_are_unique_by_key():
    C = 7
    fit = planted_world(C, 20, seed=1)
    ev = planted_world(C, 40, seed=2)
    opts = cell.AnalysisOptions(estimators=("gla", "eigen"))
    fitted = cell.fit_priors(fit.zs, fit.labels, C, np.arange(C) * 30 + 5, opts)
    tallies = cell.evaluate([(ev.zs, ev.ft, ev.labels)], fitted, opts)
    tables = cell.build_tables("m", "d", "test", [f"c{i}" for i in range(C)], fitted, tallies,
                               np.arange(C) * 30 + 5)
    schema.check(tables)
    assert set(tables) <= set(schema.TABLES)
    for name, df in tables.items():
        keys = schema.keys(name)
        assert df.select(keys).is_duplicated().sum() == 0, name
        assert df.select(keys).null_count().sum_horizontal()[0] == 0, name
