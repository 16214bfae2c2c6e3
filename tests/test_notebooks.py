"""The research notebooks: committed clean and thin, and every one runs top to bottom on the smoke preset."""
import ast
import json

import nbformat
import pytest

from cifar_ae import cli
from cifar_ae import notebooks as nb
from cifar_ae.trials import TRIALS

STEMS = ["cifar_classification_v0", "cifar_classification_v1", "cifar_classification_v2_no_augmentation",
         "cifar_classification_v2_with_augmentation_adam", "cifar_classification_v2_with_augmentation_sgd"]
STUDY_NUMBERS = {v for t in TRIALS.values() for v in t.study.values()}


def read(stem):
    return nbformat.read(nb.NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)


def code_cells(notebook):
    return [c for c in notebook.cells if c.cell_type == "code"]


def test_registry_lists_exactly_the_notebooks():
    assert sorted(nb.NOTEBOOKS) == sorted(STEMS)
    for stem in STEMS:
        assert (nb.NOTEBOOK_DIR / f"{stem}.ipynb").is_file()


@pytest.mark.parametrize("stem", STEMS)
def test_committed_notebook_is_clean(stem):
    notebook = read(stem)
    nbformat.validate(notebook)
    assert nb.problems(notebook) == [], f"{stem}: run `python -m cifar_ae.notebooks strip notebooks/{stem}.ipynb`"
    assert notebook.metadata["kernelspec"]["name"] == nb.KERNEL


@pytest.mark.parametrize("stem", STEMS)
def test_first_code_cell_holds_the_parameters(stem):
    first = code_cells(read(stem))[0]
    assert "parameters" in first.metadata.get("tags", [])
    params = nb.notebook_parameters(nb.NOTEBOOK_DIR / f"{stem}.ipynb")
    assert {k: params[k] for k in nb.PARAMETERS} == {"PRESET": "quick", "SEED": 0, "CIFAR10_DIR": None, "RUNS": None,
                                                      "FORCE": False}


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_is_thin(stem):
    """Cells call cifar_ae / augment: no functions, classes or lambdas, and no study number typed in."""
    for cell in code_cells(read(stem)):
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), cell.source
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                assert node.value not in STUDY_NUMBERS, f"study number {node.value} typed into {stem}: {cell.source}"


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_uses_its_trials(stem):
    source = "\n".join(c.source for c in code_cells(read(stem)))
    for trial, _ in nb.NOTEBOOKS[stem].runs:
        assert f'"{trial}"' in source
    assert "verbose=1" in source and "nb.study_comparison(" in source


def test_strip_removes_outputs_and_counts(tmp_path):
    notebook = read(STEMS[0])
    cell = code_cells(notebook)[1]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    cell.execution_count = 3
    cell.metadata["papermill"] = {"duration": 1.0}
    notebook.metadata["papermill"] = {}
    assert len(nb.problems(notebook)) == 4
    path = tmp_path / "dirty.ipynb"
    nbformat.write(notebook, path)
    assert nb._strip_main([str(path)]) == 1  # changed a file: a pre-commit hook fails so the change gets staged
    assert nb.problems(nbformat.read(path, as_version=4)) == []
    assert nb._strip_main([str(path)]) == 0
    assert "parameters" in code_cells(nbformat.read(path, as_version=4))[0].metadata["tags"]


def test_names_and_aliases_resolve():
    assert [s.stem for s in nb.resolve(["v0", "cifar_classification_v1.ipynb", "v2-joint-aug-sgd"])] == \
        ["cifar_classification_v0", "cifar_classification_v1", "cifar_classification_v2_with_augmentation_sgd"]
    assert [s.stem for s in nb.resolve([])] == list(nb.NOTEBOOKS)


def test_unknown_notebook_is_a_one_line_error(capsys):
    assert cli.main(["notebooks", "v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown notebook 'v9'; valid notebooks: v0 (cifar_classification_v0), v1")
    assert "\n" not in err
    assert cli.main(["notebooks", "--preset", "fast", "v0"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown preset 'fast'; valid presets: smoke, quick, full, study."
    assert cli.main(["notebooks", "-p", "NOPE=1", "v0"]) == 2
    assert "unknown parameter NOPE" in capsys.readouterr().err


def test_failing_notebook_is_reported_and_still_exported(tmp_path, monkeypatch, capsys):
    broken = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('PRESET = "quick"\nSEED = 0\nCIFAR10_DIR = None\nRUNS = None\nFORCE = False',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('raise RuntimeError("boom")')])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nb").mkdir()
    nbformat.write(broken, tmp_path / "nb" / "cifar_classification_v0.ipynb")
    monkeypatch.setattr(nb, "NOTEBOOK_DIR", tmp_path / "nb")
    assert cli.main(["notebooks", "--preset", "smoke", "--runs", str(tmp_path / "runs"), "v0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 1 notebook(s) failed: cifar_classification_v0: In [3] raised RuntimeError: boom (see ")
    folder = tmp_path / "runs" / "notebooks" / "cifar_classification_v0" / "smoke-s0"
    assert (folder / "cifar_classification_v0.html").is_file()
    timing = json.loads((folder / "timing.json").read_text())
    assert not timing["ok"] and timing["runs"][0]["status"] == "missing"


def test_table_renders_three_ways():
    table = nb.Table(["a", "b"], [["x<y", 1]], caption="c")
    assert "x&lt;y" in table._repr_html_() and "| x<y | 1 |" in table._repr_markdown_()
    assert str(table).splitlines()[2] == "x<y  1"


def test_switched_off_variant_is_skipped_not_trained(tmp_path, capsys):
    root = tmp_path
    assert nb.run_trial_if(False, "v1-cnn-ae", "smoke", 0, out_dir=root, variant="upsampling") is None
    assert "skipped" in capsys.readouterr().out
    nb.show_figures(None)  # the cells after a skipped run show nothing and do not fail
    assert nb.study_comparison(None).rows == []
    run = root / "v1-cnn-ae" / "smoke-s0-upsampling"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    assert nb.run_trial_if(False, "v1-cnn-ae", "smoke", 0, out_dir=root, variant="upsampling") == run  # still shown


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("nb_runs")


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_notebook_runs_top_to_bottom_on_smoke(stem, smoke_runs, cifar_dir, capsys):
    assert cli.main(["notebooks", "--preset", "smoke", "--runs", str(smoke_runs), "--data", cifar_dir, stem]) == 0
    folder = smoke_runs / "notebooks" / stem / "smoke-s0"
    timing = json.loads((folder / "timing.json").read_text())
    assert timing["ok"] and timing["parameters"]["PRESET"] == "smoke" and timing["seconds"] > 0
    assert {r["status"] for r in timing["runs"]} == {"trained"}
    executed = nbformat.read(folder / f"{stem}.ipynb", as_version=4)
    outputs = [o for c in code_cells(executed) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # curves, reconstructions, confusion, ...
    tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("| run | preset | metric | this run | study |" in t for t in tables)
    assert (folder / f"{stem}.html").stat().st_size > 10_000
    assert "\r" not in "".join(o.get("text", "") for o in outputs)  # progress bars collapsed to their last state
    assert "ok in" in capsys.readouterr().out
    if stem == "cifar_classification_v1":  # the UpSampling2D variant has its own folder; the plain run is untouched
        plain = json.loads((smoke_runs / "v1-cnn-ae" / "smoke-s0" / "config.json").read_text())
        variant = json.loads((smoke_runs / "v1-cnn-ae" / "smoke-s0-upsampling" / "config.json").read_text())
        assert plain["trial"]["model_args"] == {} and variant["trial"]["model_args"] == {"upsampling": "upsampling"}
