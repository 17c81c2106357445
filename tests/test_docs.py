"""The docs in the repository: generated pages are current and complete, and every link
stays inside the repository (``make docs`` regenerates the pages)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gla.analyze import schema
from gla.pipeline import cli, docgen
from gla.pipeline.config import load_config
from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = ("method.md", "store.md", "config.md", "cli.md", "quickstart.md", "faq.md")


def test_docs_folder_has_every_page():
    assert [p for p in PAGES if not (DOCS / p).is_file()] == []


@pytest.mark.parametrize("page", ["config.md", "cli.md", "store.md"])
def test_generated_page_is_current(page):
    want = docgen.pages(DOCS)[DOCS / page]
    assert (DOCS / page).read_text() == want, f"docs/{page} is stale: run `make docs`"


def _sections(md: str) -> dict[str, set[str]]:
    """'## heading' -> the first-column code names of its table rows."""
    out: dict[str, set[str]] = {}
    current = None
    for line in md.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = set()
        elif current and line.startswith("| `"):
            out[current].add(line.split("`")[1])
    return out


def test_config_reference_has_every_key_with_a_meaning():
    sections = _sections((DOCS / "config.md").read_text())
    for key, f, _ in docgen.config_fields():
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        parent = parent.removesuffix(".NAME")
        title = "Top level" if not parent else next(t for t in sections if f"[{parent}" in t)
        assert key.rsplit(".", 1)[-1] in sections[title], f"{key} missing from docs/config.md"
        assert docgen.describe(key, f), f"config key {key} has no description (add one in config.py)"


def test_completeness_check_can_fail():
    class New(BaseModel):
        documented: int = Field(1, description="has one")
        undocumented: int = 2

    fields = {k: f for k, f, _ in docgen.config_fields(New)}
    assert docgen.describe("documented", fields["documented"]) == "has one"
    assert docgen.describe("undocumented", fields["undocumented"]) == ""


def test_staleness_check_can_fail(monkeypatch):
    monkeypatch.setitem(docgen.CONFIG_DOCS, "store", "something else")
    assert docgen.config_reference() != (DOCS / "config.md").read_text()


def test_cli_reference_has_every_command_and_option():
    text = (DOCS / "cli.md").read_text()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set(cli.COMMANDS)
    for name, p in sub.choices.items():
        part = text.split(f"## `gla {name}`", 1)[1].split("\n## ", 1)[0]
        for a in p._actions:
            for opt in a.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}" in part, f"gla {name} {opt} missing from docs/cli.md"


def test_store_doc_has_every_result_column():
    text = (DOCS / "store.md").read_text()
    for t in schema.TABLES.values():
        part = text.split(f"### `{t.name}`", 1)[1].split("\n### ", 1)[0]
        for col, c in t.columns.items():
            assert re.search(rf"\| \**`{re.escape(col)}`\** \| {c.dtype} \|", part), (t.name, col)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", ["README.md", *(f"docs/{p}" for p in PAGES)])
def test_links_stay_inside_the_repository(doc):
    path = REPO / doc
    text = path.read_text()
    assert "../shared" not in text
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        dest = (path.parent / target.split("#")[0]).resolve()
        assert dest.is_relative_to(REPO), f"{doc}: {target} leaves the repository"
        assert dest.exists(), f"{doc}: {target} does not exist"


def _toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", *(f"docs/{p}" for p in PAGES)])
def test_config_examples_in_the_docs_are_valid(doc, tmp_path):
    """Every ```toml block in the docs is a config that loads (keys, types, rules)."""
    for i, block in enumerate(_toml_blocks((REPO / doc).read_text())):
        path = tmp_path / f"example-{i}.toml"
        path.write_text(block)
        cfg = load_config(path)
        assert cfg.models or cfg.datasets, f"{doc} example {i} configures nothing"


def test_quickstart_has_a_config_example():
    assert _toml_blocks((DOCS / "quickstart.md").read_text())
