"""The bad-input battery (tests/bad_inputs_cases.py): every case ends with exit code 2,
exactly one stderr line naming the file, column or option at fault, and every byte of
the world (store, published results, inputs, config) as it was.

The same cases give bench/bad_inputs.py's "N of M" figure.
"""

from __future__ import annotations

import importlib.util
import logging

import pytest

pytest.importorskip("PIL")

from bad_inputs_cases import all_cases, build_world, run_case  # noqa: E402

CASES = all_cases()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("bad-inputs") / "world")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_store_unchanged(case, template, tmp_path):
    if case.torch and importlib.util.find_spec("torch") is None:
        pytest.skip("gla extract needs the extract extra")
    out = run_case(case, template, tmp_path)
    logging.getLogger().handlers.clear()  # gla extract configures logging per call
    assert not out.problems(), f"{out.problems()}\n{out.stderr}"


def test_the_battery_is_large_and_its_names_unique():
    assert len(CASES) >= 150
    assert len({c.name for c in CASES}) == len(CASES)
