"""The research notebooks: committed clean, editable trial and model cells, an edited trial trains a variant beside
the baseline, every notebook runs top to bottom on smoke, and the pinned Jupyter front end and kernel start."""
import ast
import json
import os
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest
from conftest import free_port

from cifar_ae import cli, notebooks as nb, notebooks_run as nbrun, runs as R, training as TR
from cifar_ae.trials import TRIALS, get_trial

STUDY_STEMS = ["cifar_classification_v0", "cifar_classification_v1", "cifar_classification_v2_no_augmentation",
               "cifar_classification_v2_with_augmentation_adam", "cifar_classification_v2_with_augmentation_sgd"]
REGISTERED = STUDY_STEMS + ["beyond_the_study_v3"]  # trial and model cells that are a registered trial
EDITABLE = REGISTERED + ["beyond_the_study_v4"]  # notebooks with trial and model cells (v4's: an experiment row)
STEMS = EDITABLE + ["anomaly_detection"]
STUDY_NUMBERS = {v for t in TRIALS.values() for v in t.study.values()}


def read(stem):
    return nbformat.read(nbrun.NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)


def code_cells(notebook):
    return [c for c in notebook.cells if c.cell_type == "code"]


def test_registry_lists_exactly_the_notebooks():
    assert sorted(nbrun.NOTEBOOKS) == sorted(STEMS)
    assert sorted(p.stem for p in nbrun.NOTEBOOK_DIR.glob("*.ipynb")) == sorted(STEMS)


@pytest.mark.parametrize("stem", STEMS)
def test_committed_notebook_is_clean(stem):
    notebook = read(stem)
    nbformat.validate(notebook)
    assert nbrun.problems(notebook) == [], f"{stem}: run `python -m cifar_ae.notebooks_run strip notebooks/{stem}.ipynb`"
    assert notebook.metadata["kernelspec"]["name"] == nbrun.KERNEL


@pytest.mark.parametrize("stem", STEMS)
def test_first_code_cell_holds_the_parameters(stem):
    first = code_cells(read(stem))[0]
    assert "parameters" in first.metadata.get("tags", [])
    params = nbrun.notebook_parameters(nbrun.NOTEBOOK_DIR / f"{stem}.ipynb")
    assert {k: params[k] for k in nbrun.PARAMETERS} == {"PRESET": "quick", "SEED": 0, "CIFAR10_DIR": None, "RUNS": None}
    if stem in EDITABLE:
        assert {k: params[k] for k in ("FORCE", "VARIANT", "CHANGES")} == {"FORCE": False, "VARIANT": None, "CHANGES": {}}


@pytest.mark.parametrize("stem", STEMS)
def test_no_result_number_is_typed_into_a_notebook(stem):
    """Numbers come from run folders: a study number typed into a cell is an error (functions are allowed)."""
    for cell in code_cells(read(stem)):
        tree = ast.parse(cell.source)
        # a hyperparameter passed by keyword (dropout=0.5) is a setting, not a result
        settings = {id(k.value) for k in ast.walk(tree) if isinstance(k, ast.keyword)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, float) and id(node) not in settings:
                assert node.value not in STUDY_NUMBERS, f"study number {node.value} typed into {stem}: {cell.source}"


@pytest.mark.parametrize("stem", REGISTERED)
def test_trial_and_model_cells_as_committed_are_the_registered_trial(stem):
    """Run unedited, the editable cells give the trial as cifar_ae/trials.py defines it: the plain run folder."""
    ns = {"CHANGES": {}, "get_trial": get_trial}
    cells = [c.source for c in code_cells(read(stem)) if c.source.startswith(("# The trial:", "# The model:"))]
    assert len(cells) == 2, stem
    for source in cells:
        exec(source, ns)
    trial = ns["trial"]
    assert "model_args = dict(" in cells[1] and "trial.replace(model=" in cells[1]
    assert R.is_registered(trial, trial.settings("quick"), "quick", TR.builder_defaults(trial.model)), stem
    source = "\n".join(c.source for c in code_cells(read(stem)))
    assert "variant=VARIANT" in source and f'nb.compare(nb.baseline_run("{trial.name}"' in source


def test_the_v4_recipe_cells_as_committed_are_its_experiment_row_and_joint():
    """v4's trial and model cells write out the recipe row (RECIPE) field by field: run unedited they are that row,
    so the run lands in the row's own folder; an edit is a change against it; the model has no pixel bypass."""
    from cifar_ae.bypass import pixel_bypass
    from cifar_ae.experiments import row_trial
    from cifar_ae.models import BUILDERS
    from cifar_ae.trials import AIRBENCH_LOOKAHEAD, AIRBENCH_WEIGHT_DECAY
    stem = "beyond_the_study_v4"
    ns = {"CHANGES": {}, "row_trial": row_trial, "AIRBENCH_LOOKAHEAD": AIRBENCH_LOOKAHEAD,
          "AIRBENCH_WEIGHT_DECAY": AIRBENCH_WEIGHT_DECAY}
    cells = [c.source for c in code_cells(read(stem)) if c.source.startswith(("# The trial:", "# The model:"))]
    assert len(cells) == 2
    for source in cells:
        exec(source, ns)
    recipe, trial = row_trial(ns["RECIPE"]), ns["trial"]
    assert R.trial_changes(recipe, trial) == {}
    assert set(ns["model_args"]) == set(TR.builder_defaults(trial.model))  # every argument shown
    assert pixel_bypass(BUILDERS[trial.model](**trial.model_args)) is False
    edited = {"CHANGES": {"recon_weight": (40.0, 40.0)}, **{k: v for k, v in ns.items() if k != "CHANGES"}}
    exec(cells[0], edited)
    assert R.trial_changes(recipe, edited["trial"]) == {"recon_weight": [40.0, 40.0]}
    source = "\n".join(c.source for c in code_cells(read(stem)))
    assert "nb.train_row(trial, RECIPE" in source and "variant=VARIANT" in source and "nb.row_folder(RECIPE" in source


@pytest.mark.parametrize("stem, names", [("cifar_classification_v0", ["v0-dense", "v0-conv1d"]),
                                         ("cifar_classification_v1", ["v1-feature-classifier"])])
def test_classifier_cells_as_committed_are_the_registered_classifiers(stem, names):
    """v0 and v1 train classifiers on the autoencoder: each has its own editable cell, and its run is compared."""
    cells = [c.source for c in code_cells(read(stem)) if c.source.startswith("# The classifier:")]
    assert len(cells) == len(names), stem
    source = "\n".join(c.source for c in code_cells(read(stem)))
    for cell, name in zip(cells, names):
        ns = {"get_trial": get_trial}
        exec(cell, ns)
        (trial,) = [v for k, v in ns.items() if k != "get_trial" and not k.startswith("__")]
        assert trial.name == name
        assert R.is_registered(trial, trial.settings("quick"), "quick", TR.builder_defaults(trial.model)), name
        assert f'nb.compare(nb.baseline_run("{name}"' in source


def test_strip_removes_outputs_and_counts(tmp_path):
    notebook = read(STUDY_STEMS[0])
    cell = code_cells(notebook)[1]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    cell.execution_count = 3
    cell.metadata["papermill"] = {"duration": 1.0}
    notebook.metadata["papermill"] = {}
    assert len(nbrun.problems(notebook)) == 4
    path = tmp_path / "dirty.ipynb"
    nbformat.write(notebook, path)
    assert nbrun._strip_main([str(path)]) == 1  # changed a file: a pre-commit hook fails so the change gets staged
    assert nbrun.problems(nbformat.read(path, as_version=4)) == []
    assert nbrun._strip_main([str(path)]) == 0
    assert "parameters" in code_cells(nbformat.read(path, as_version=4))[0].metadata["tags"]


def test_names_and_aliases_resolve():
    assert [s.stem for s in nbrun.resolve(["v0", "cifar_classification_v1.ipynb", "v2-joint-aug-sgd", "anomaly", "v3",
                                           "v4"])] \
        == ["cifar_classification_v0", "cifar_classification_v1", "cifar_classification_v2_with_augmentation_sgd",
            "anomaly_detection", "beyond_the_study_v3", "beyond_the_study_v4"]
    assert [s.stem for s in nbrun.resolve([])] == list(nbrun.NOTEBOOKS)


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
    monkeypatch.setattr(nbrun, "NOTEBOOK_DIR", tmp_path / "nb")
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
    (run / "config.json").write_text(json.dumps({"trial": {"name": "v1-cnn-ae", "task": "autoencoder"}}))
    (run / "metrics.json").write_text(json.dumps({"trial": "v1-cnn-ae", "preset": "smoke", "seed": 0, "epochs": 1,
                                                  "recon_mse": 0.01}))
    assert nb.run_trial_if(False, "v1-cnn-ae", "smoke", 0, out_dir=root, variant="upsampling") == run  # still shown


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("nb_runs")


@pytest.mark.slow
@pytest.mark.parametrize("stem", EDITABLE)
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
    if stem in STUDY_STEMS:
        tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
        study = [t for t in tables if "| run | preset | metric | this run | study |" in t][-1]  # the last: every run
        trial = {"cifar_classification_v0": "v0-mlp-ae", "cifar_classification_v1": "v1-feature-classifier",
                 "cifar_classification_v2_no_augmentation": "v2-joint-noaug",
                 "cifar_classification_v2_with_augmentation_adam": "v2-joint-aug-adam",
                 "cifar_classification_v2_with_augmentation_sgd": "v2-joint-aug-sgd"}[stem]
        # the unedited notebook's own run is the registered trial: its row shows the study's number, no "(...)" label
        rows = " ".join(line for line in study.splitlines() if line.startswith(f"| {trial} |"))
        expected = {k: (f"{100 * v:.0f}%" if k == "test_accuracy" else f"{v:.4f}") for k, v in TRIALS[trial].study.items()
                    if k != "train_accuracy"}
        assert rows and all(f"| {v} |" in rows for v in expected.values()), (rows, expected)
    text = "".join(o.get("text", "") for o in outputs)
    assert "this run is the baseline" in text  # nothing edited: the comparison cell says so
    assert (folder / f"{stem}.html").stat().st_size > 10_000
    assert "\r" not in text  # progress bars collapsed to their last state
    assert "ok in" in capsys.readouterr().out
    if stem == "beyond_the_study_v4":  # the recipe's run is the experiment row's own folder, and the model is joint
        assert (smoke_runs / "v4_honest" / "recon80" / "smoke-s0" / "metrics.json").is_file()
        assert "joint: the decoder reads only the code" in text
    if stem == "cifar_classification_v1":  # the UpSampling2D variant has its own folder beside the plain run
        variant = json.loads((smoke_runs / "v1-cnn-ae" / "smoke-s0-upsampling" / "config.json").read_text())
        assert (smoke_runs / "v1-cnn-ae" / "smoke-s0" / "metrics.json").is_file()
        assert variant["trial"]["model_args"]["upsampling"] == "upsampling"


@pytest.mark.slow
def test_an_edited_trial_trains_a_variant_beside_the_untouched_baseline(tmp_path, cifar_dir, capsys):
    """The notebook run twice through papermill: as committed, then with a learning rate injected."""
    runs, stem = tmp_path / "runs", "cifar_classification_v2_no_augmentation"
    assert cli.main(["notebooks", "--preset", "smoke", "--runs", str(runs), "--data", cifar_dir, stem]) == 0
    baseline = runs / "v2-joint-noaug" / "smoke-s0"
    before = (baseline / "metrics.json").read_bytes(), (baseline / "metrics.json").stat().st_mtime_ns
    assert cli.main(["notebooks", "--preset", "smoke", "--runs", str(runs), "--data", cifar_dir, stem,
                     "--out", str(tmp_path / "edited"), "-p", "CHANGES={'learning_rate': 0.01}"]) == 0
    folders = sorted(p.name for p in (runs / "v2-joint-noaug").iterdir())
    assert len(folders) == 2 and folders[0] == "smoke-s0" and folders[1].startswith("smoke-s0-")
    variant = runs / "v2-joint-noaug" / folders[1]
    assert json.loads((variant / "config.json").read_text())["trial"]["learning_rate"] == 0.01
    assert ((baseline / "metrics.json").read_bytes(), (baseline / "metrics.json").stat().st_mtime_ns) == before
    executed = nbformat.read(tmp_path / "edited" / stem / "smoke-s0" / f"{stem}.ipynb", as_version=4)
    compare = next(c for c in code_cells(executed) if c.source.startswith("nb.compare("))
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in compare.outputs)
    assert "v2-joint-noaug/smoke-s0" in shown and f"v2-joint-noaug/{folders[1]}" in shown
    assert "learning_rate=0.01" in shown and any("image/png" in o.get("data", {}) for o in compare.outputs)
    changed = next(line for line in shown.splitlines() if line.startswith("| changed |"))
    assert changed.split("|")[2:4] == [" (as registered) ", " learning_rate=0.01 "], changed  # by meaning: only the edit


def test_compare_command_tables_two_runs(tmp_path, capsys):
    for name, acc in (("a", 0.5), ("b", 0.6)):
        run = tmp_path / "v2-joint-noaug" / f"smoke-s0-{name}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"trial": {"name": "v2-joint-noaug", "task": "joint"}}))
        (run / "metrics.json").write_text(json.dumps({"trial": "v2-joint-noaug", "preset": "smoke", "seed": 0,
                                                      "test_accuracy": acc, "recon_mse": 0.01, "epochs": 2}))
        (run / "history.csv").write_text("epoch,label_loss,val_label_loss,label_accuracy,val_label_accuracy\n0,2,2,0.3,0.3\n"
                                         "1,1.5,1.6,0.5,0.45\n")
    a, b = tmp_path / "v2-joint-noaug" / "smoke-s0-a", tmp_path / "v2-joint-noaug" / "smoke-s0-b"
    assert cli.main(["compare", str(a), str(b), "--figure", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "| test accuracy | 50.0% | 60.0% | +10.0 pt |" in out and (tmp_path / "c.png").stat().st_size > 10_000




def test_the_pinned_front_end_and_its_kernel_start(tmp_path):
    """JupyterLab (requirements.txt) answers on loopback, and the README's kernel executes a notebook via nbclient."""
    from nbclient import NotebookClient
    version = subprocess.run(["jupyter", "lab", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == "4.6.6"
    port, token = free_port(), "t0ken"
    server = subprocess.Popen(["jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
                               f"--ServerApp.token={token}", f"--ServerApp.root_dir={tmp_path}"]
                              + (["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5) as r:
                    status = json.loads(r.read())
            except OSError:
                assert server.poll() is None, "jupyter lab exited"
                time.sleep(1)
        assert status is not None and "started" in status
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from cifar_ae import notebooks as nb\nnb.setup('smoke', 0)"),
        nbformat.v4.new_code_cell("import sys\nloaded = get_ipython().extension_manager.loaded\n"
                                  "print(any(e.endswith('autoreload') for e in loaded), sys.executable)")])
    NotebookClient(notebook, kernel_name=nbrun.KERNEL, timeout=300).execute()
    out = notebook.cells[1].outputs[0]["text"]
    assert out.startswith("True") and os.path.realpath(out.split()[1]) == os.path.realpath(sys.executable)


def test_report_tables_the_notebooks_timing_files(tmp_path, capsys):
    run = tmp_path / "v0-dense" / "quick-s0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"train_seconds": 90.0}))
    folder = tmp_path / "notebooks" / "cifar_classification_v0" / "quick-s0"
    folder.mkdir(parents=True)
    (folder / "timing.json").write_text(json.dumps({
        "notebook": "cifar_classification_v0", "preset": "quick", "seed": 0, "ok": True, "error": None,
        "seconds": 390.5, "started": "2026-12-01T12:44:57+00:00",
        "runs": [{"trial": "v0-dense", "variant": None, "run": str(run), "status": "trained"}]}))
    assert cli.main(["report", "--notebooks", "--runs", str(tmp_path / "notebooks"),
                     "--output", str(tmp_path / "nb.md")]) == 0
    row = "| cifar_classification_v0 | quick-s0 | ok | 6.5 | 2026-12-01T12:44:57+00:00 | v0-dense trained (1.5 min training) |"
    assert row in capsys.readouterr().out and row in (tmp_path / "nb.md").read_text()
    with pytest.raises(FileNotFoundError, match="no timing.json under"):
        nbrun.timing_table(tmp_path / "empty")
