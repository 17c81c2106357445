"""Config loading: defaults, path resolution, overrides, and one-line errors naming the key."""

from __future__ import annotations

import pytest
from gla.pipeline.config import CellFilter, load_config, model_dict
from gla.pipeline.errors import UserError

BASE = """
store = "store"
[analysis]
estimators = ["gla", "eigen"]
[[models]]
name = "tiny"
arch = "tiny-clip"
model_config = "assets/tiny.json"
pretrained = "openai"
finetuned = { fashion = "ft.safetensors" }
[[datasets]]
name = "fashion"
kind = "fashion-mnist"
pool = "test"
[datasets.splits]
val = { per_class = 20 }
test = { rest = true }
"""


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_paths_resolve_against_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.store == str(tmp_path / "store")
    m = model_dict(cfg.models[0])
    assert m["model_config"] == str(tmp_path / "assets/tiny.json")
    assert m["pretrained"] == "openai"  # an open_clip tag is not a path
    assert m["finetuned"] == {"fashion": str(tmp_path / "ft.safetensors")}
    assert cfg.analysis.estimators == ["gla", "eigen"]
    assert cfg.compute.workers == 2 and cfg.extract.precision == "fp32"
    assert cfg.datasets[0].splits["val"].per_class == 20


def test_overrides_and_only(tmp_path):
    cfg = load_config(write(tmp_path, BASE), {"analysis.fit_split": "dev", "compute.workers": 0})
    assert cfg.analysis.fit_split == "dev" and cfg.compute.workers == 0
    assert len(cfg.cells(CellFilter("model=tiny,dataset=fashion"))) == 1
    assert cfg.cells(CellFilter("dataset=other")) == []
    with pytest.raises(UserError, match="--only"):
        CellFilter("modle=tiny")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"extract.precision": "fp64"}, "extract.precision"),
        ({"analysis.temperature": "hot"}, "analysis.temperature"),
        ({"compute.threads": 3}, "compute.threads"),
        ({"datasets": [{"name": "d", "kind": "imagefolder", "splits": {"val": {"per_class": 2, "rest": True}}}]},
         "datasets['d'].splits.val"),
        ({"models": [{"name": "a/b", "arch": "x"}]}, "models['a/b'].name"),
    ],
)
def test_errors_name_the_key(tmp_path, override, needle):
    path = write(tmp_path, BASE)
    with pytest.raises(UserError) as err:
        load_config(path, override)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(write(tmp_path, "store = "))


def test_only_takes_patterns_and_repeated_clauses():
    f = CellFilter(["model=vit*,dataset=places", "model=rn50"])
    assert f.keeps("vitb32", "places") and not f.keeps("vitb32", "inat")
    assert f.keeps("rn50", "inat") and not f.keeps("convnext", "places")
    assert not CellFilter(None) and CellFilter(None).keeps("any", "cell")


def test_class_names_from_a_mapping_or_a_file(tmp_path):
    base = BASE.replace('kind = "fashion-mnist"', 'kind = "imagefolder"\nroot = "imgs"')
    cfg = load_config(write(tmp_path, base.replace('root = "imgs"', 'root = "imgs"\nclass_names = { b = "bee", a = "ant" }')))
    d = cfg.datasets[0]
    assert d.class_folders == ["b", "a"] and d.class_names == ["bee", "ant"]
    (tmp_path / "n.txt").write_text("# comment\nant\n\nbee\n")
    (tmp_path / "n.json").write_text('{"b": "bee", "a": "ant"}')
    (tmp_path / "n.csv").write_text("folder,name\nb,bee\na,ant\n")
    for f, folders, names in [("n.txt", [], ["ant", "bee"]), ("n.json", ["b", "a"], ["bee", "ant"]),
                              ("n.csv", ["b", "a"], ["bee", "ant"])]:
        d = load_config(write(tmp_path, base.replace('root = "imgs"', f'root = "imgs"\nclass_names_file = "{f}"'))).datasets[0]
        assert (d.class_folders, d.class_names, d.class_names_file) == (folders, names, str(tmp_path / f))
    (tmp_path / "bad.csv").write_text("a,b\n")
    for extra, needle in [('class_names_file = "bad.csv"', "needs the header folder,name"),
                          ('class_names_file = "n.txt"\nclass_names = ["x"]', "not both")]:
        with pytest.raises(UserError, match=needle) as err:
            load_config(write(tmp_path, base.replace('root = "imgs"', f'root = "imgs"\n{extra}')))
        assert "datasets['fashion']" in str(err.value) and "\n" not in str(err.value)


def test_templates_per_dataset(tmp_path):
    (tmp_path / "t.txt").write_text("a sketch of a {}.\n")
    cfg = load_config(write(tmp_path, BASE.replace('pool = "test"', 'pool = "test"\ntemplates = "t.txt"')))
    m, d = cfg.models[0], cfg.datasets[0]
    assert d.templates == str(tmp_path / "t.txt")
    assert model_dict(m)["templates"] == "simple" and model_dict(m, d)["templates"] == d.templates
    with pytest.raises(UserError, match=r"datasets\['fashion'\].templates: unknown template set 'openai' "
                                        r"\(did you mean 'openai-imagenet'\?\)"):
        load_config(write(tmp_path, BASE.replace('pool = "test"', 'pool = "test"\ntemplates = "openai"')))


@pytest.mark.parametrize(("line", "needle"), [
    ('pretrained = ""', "models['tiny'].pretrained = '': empty"),
    ('pretrained = "  "', "models['tiny'].pretrained = '  ': empty"),
    ("", "models['tiny'].pretrained: required key is missing"),
])
def test_pretrained_must_be_said_and_none_means_random_init(tmp_path, capsys, line, needle):
    from gla.extract.models import model_identity, parse_pretrained
    from gla.pipeline.cli import main

    path = write(tmp_path, BASE.replace('pretrained = "openai"', line))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert needle in str(err.value) and 'pretrained = "none"' in str(err.value)
    assert main(["check", str(path)]) == 2  # gla check: exit 2, one line naming the key
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and needle in out.err
    m = load_config(write(tmp_path, BASE.replace('pretrained = "openai"', 'pretrained = "none"'))).models[0]
    assert m.pretrained == "none" and parse_pretrained(m.pretrained).kind == "none"
    ident = model_identity({**model_dict(m), "model_config": ""})
    assert ident["pretrained"] == "random-init"  # the extract identity of no weights
