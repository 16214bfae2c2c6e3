"""Experiments as data (cifar_ae.experiments): every file reads and builds, every committed run folder is the run
its row defines, tables regenerate from run folders, and a new row trains through the runner with no code change."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_ae import experiments as X, runs
from cifar_ae.trials import TRIALS
from cifar_ae.training import builder_defaults, check_buildable

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
EXPERIMENTS = X.all_experiments()


def test_the_registry_is_small_and_the_listing_fits_one_screen():
    assert len([t for t in TRIALS if t.startswith(("v0", "v1", "v2", "v3", "v4"))]) <= 15
    out = subprocess.run([sys.executable, "-m", "cifar_ae", "list", "--no-flops"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert len(out.splitlines()) <= 40 and "v4-joint-lead" in out


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_row_of_every_experiment_builds(name):
    experiment = EXPERIMENTS[name]
    assert experiment.rows, name
    for row in experiment.rows.values():
        check_buildable(row.trial)  # the builder takes its model_args; an upstream is an autoencoder trial
        assert row.why and len(row.name) <= 30, row.name


def test_every_formerly_registered_trial_is_a_row():
    formerly = {r.formerly for e in EXPERIMENTS.values() for r in e.rows.values() if r.formerly}
    # the 46 trials registered before the move less the 15 kept, and the lead's old name (now v4-joint-lead)
    assert len(formerly) == 46 - 15 + 1 and not formerly & set(TRIALS)
    lead = EXPERIMENTS["v4"].rows["lead"]
    assert lead.formerly.endswith("-alltrain-lightdec") and lead.trial.replace(name="v4-joint-lead",
                                                                               description="") == TRIALS["v4-joint-lead"].replace(description="")


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_each_row_changes_only_what_its_changes_name(name):
    for row in EXPERIMENTS[name].rows.values():
        if row.parent not in EXPERIMENTS[name].rows:
            continue
        parent = EXPERIMENTS[name].rows[row.parent].trial
        differ = {f.name for f in dataclasses.fields(row.trial)
                  if runs.canonical(getattr(row.trial, f.name)) != runs.canonical(getattr(parent, f.name))}
        assert differ - {"name", "description"} == set(row.changes), (name, row.name)


def test_controls_change_what_their_names_say():
    for experiment in EXPERIMENTS.values():
        for row in experiment.rows.values():
            if row.name.endswith("-norecon"):
                assert row.trial.loss_weights["reconstruction"] == 0 and row.trial.recon_weight is None
            if "-balanced" in row.name:
                assert row.trial.train_set == "balanced"


def _committed_runs():
    for name, experiment in EXPERIMENTS.items():
        for run in sorted((RESULTS / "runs" / name).glob("*/*-s*")):
            yield experiment, experiment.rows[run.parent.name], run


def test_every_committed_run_folder_is_the_run_its_row_defines():
    """Its stored key's trial fields and settings are what the row builds today (so moving a trial into a row kept
    its key); folders from before run keys are compared on the trial fields they recorded."""
    checked = 0
    for experiment, row, run in _committed_runs():
        config = json.loads((run / "config.json").read_text())
        preset = run.name.rsplit("-s", 1)[0]
        epochs = X.row_epochs(experiment, row, preset, int(run.name.rsplit("-s", 1)[1]))  # its own, or its budget's
        settings = {**row.trial.settings(preset), **({"epochs": epochs} if epochs else {})}
        defaults = builder_defaults(row.trial.model)
        recorded = config["key"]["trial"] if "key" in config else config["trial"]
        mine = runs.key_fields(row.trial, defaults)
        for key in set(recorded) - set(runs.key_fields(row.trial)) - {"name", "description", "study", "presets"}:
            mine.setdefault(key, getattr(row.trial, key))  # an old config records every field
        mine = {k: v for k, v in runs.canonical(mine).items() if k in recorded or k in runs.BASE_FIELDS}
        theirs = {k: v for k, v in runs.canonical(recorded).items() if k not in ("name", "description", "study", "presets")}
        theirs["model_args"] = {k: v for k, v in theirs["model_args"].items()
                                if runs.canonical(defaults.get(k, object)) != v}
        if row.trial.precision == "auto":  # recorded as what "auto" chose on that machine
            mine["precision"] = theirs["precision"]
        assert mine == theirs, (run, {k: (mine.get(k), theirs.get(k)) for k in mine if mine.get(k) != theirs.get(k)})
        stored = config["key"]["settings"] if "key" in config else config["settings"]
        assert stored["epochs"] == settings["epochs"], run
        checked += 1
    assert checked >= 100


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_committed_tables_regenerate_from_their_run_folders(name):
    path = RESULTS / f"{name}.json"
    if not (RESULTS / "runs" / name).is_dir():
        pytest.skip(f"{name} has no committed runs")
    committed = json.loads(path.read_text())
    _, fresh = X.table(EXPERIMENTS[name], RESULTS / "runs", command=committed["command"])
    rel = lambda rows: [{**r, "runs": [str(Path(p).relative_to(REPO)) if Path(p).is_absolute() else p for p in r["runs"]]}
                        for r in rows]
    assert runs.canonical(rel(fresh["rows"])) == runs.canonical(rel(committed["rows"]))


def test_a_bad_row_names_the_file_the_row_and_the_fix(tmp_path):
    bad = tmp_path / "bad.toml"
    head = 'description = "x"\nbase = "v2-joint-noaug"\npreset = "smoke"\nseeds = [0]\n'
    for body, message in [
            ('[rows.a]\nwhy = "w"\nchanges = { learning_rat = 0.1 }\n', "row 'a': unknown Trial field 'learning_rat'"),
            ('[rows.a]\nwhy = "w"\nchanges = { learning_rate = -1 }\n', "row 'a': learning_rate must be"),
            ('[rows.a]\nwhy = "w"\nparent = "v2-joint-noag"\n', "did you mean v2-joint-noaug"),
            ('[rows.a]\nchanges = {}\n', "row 'a': needs a one-line why"),
            ('[rows.a]\nwhy = "w"\nparent = "b"\n[rows.b]\nwhy = "w"\nparent = "a"\n', "parents loop"),
            ('[rows.a]\nwhy = "w"\nepoch = 3\n', "unknown key 'epoch'")]:
        bad.write_text(head + body)
        with pytest.raises(X.ExperimentError, match=message) as info:
            X.load_experiment(bad)
        assert str(bad) in str(info.value)
    bad.write_text("seeds = [0\n")
    with pytest.raises(X.ExperimentError, match="not valid TOML"):
        X.load_experiment(bad)


def test_a_new_row_trains_through_the_runner_with_no_code_change(tmp_path, cifar_dir):
    """A row added to a copy of an experiment file trains on smoke, lands in <runs>/<experiment>/<row>/<preset>-s<seed>,
    is reused on a second call, and appears in the generated table; --commands lists only what is missing."""
    exp_file = tmp_path / "v2_new.toml"
    exp_file.write_text('description = "a new line of research"\nbase = "v2-joint-noaug"\npreset = "smoke"\n'
                        'seeds = [0]\ntest_every_epoch = true\n\n[rows.base]\nwhy = "the base"\nchanges = {}\n\n'
                        '[rows.lr3e-4]\nwhy = "a lower learning rate"\nchanges = { learning_rate = 3e-4 }\n')
    before = subprocess.run(["git", "status", "--porcelain", "cifar_ae"], cwd=REPO, capture_output=True, text=True).stdout
    cli = [sys.executable, "-m", "cifar_ae", "experiment", str(exp_file), "--runs", str(tmp_path / "runs")]
    listed = subprocess.run(cli + ["--commands"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert len(listed.splitlines()) == 2 and "--rows lr3e-4 --seeds 0 --preset smoke" in listed
    subprocess.run(cli + ["--rows", "lr3e-4"], cwd=REPO, capture_output=True, text=True, check=True)
    run = tmp_path / "runs" / "v2_new" / "lr3e-4" / "smoke-s0"
    config = json.loads((run / "config.json").read_text())
    assert config["trial"]["learning_rate"] == 3e-4 and config["trial"]["name"] == "v2_new.lr3e-4"
    assert "test_accuracy" in (run / "history.csv").read_text().splitlines()[0]  # test_every_epoch
    again = subprocess.run(cli + ["--rows", "lr3e-4"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "complete run found" in again
    listed = subprocess.run(cli + ["--commands"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert listed.split() == ["python", "-m", "cifar_ae", "experiment", str(exp_file), "--rows", "base", "--seeds", "0",
                              "--preset", "smoke", "--runs", str(tmp_path / "runs")]
    table = json.loads((tmp_path / "runs" / "v2_new.json").read_text())
    assert [r["row"] for r in table["rows"]] == ["lr3e-4"] and table["rows"][0]["seeds"] == [0]
    assert subprocess.run(["git", "status", "--porcelain", "cifar_ae"], cwd=REPO, capture_output=True,
                          text=True).stdout == before


def test_goal_verdicts_name_what_is_short():
    goals = EXPERIMENTS["v4"].goals
    row = {"train_pflops": 0.35, "test_accuracy": 0.925, "recon_mse": 0.002, "seeds": [0]}
    assert X.goal_verdict(goals, row) == "93% within 0.36 PFLOP: 0.50 pt short, MSE over 0.001, 1 of 3 seeds"
    row = {"train_pflops": 0.14, "test_accuracy": 0.91, "recon_mse": 0.0009, "seeds": [0, 1, 2]}
    assert X.goal_verdict(goals, row) == "90% within 0.15 PFLOP: **met**"


def test_the_readme_and_the_results_index_are_generated_and_current():
    from cifar_ae import front
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    block = readme.split(front.BEGIN, 1)[1].split(front.END, 1)[0]
    assert block.strip() == front.headline_table().strip()
    assert readme[:readme.index(front.END)].count("\n") < 60  # the results table is on the first screen
    assert (RESULTS / "README.md").read_text() == front.results_index()


def test_tracked_results_stay_small():
    files = subprocess.run(["git", "ls-files", "-z", "results"], cwd=REPO, capture_output=True, check=True).stdout
    total = sum((REPO / f).stat().st_size for f in files.decode().split("\0") if f and (REPO / f).is_file())
    assert total <= 10 * 2**20, f"tracked results/ is {total / 2**20:.1f} MiB; keep figures out of run folders"


def test_the_accuracy_against_compute_figure_holds_thirty_runs_with_its_legend_outside_the_axes(tmp_path, monkeypatch):
    """30 rows: the named ones in colour, the rest grey, one legend entry for them, the legend outside the axes."""
    rows = "".join(f'[rows.r{i}]\nwhy = "row {i}"\nchanges = {{ learning_rate = {0.001 * (i + 1)} }}\n' for i in range(30))
    path = tmp_path / "many.toml"
    path.write_text('description = "30 rows"\nbase = "v2-joint-noaug"\npreset = "quick"\nseeds = [0]\n'
                    'named = ["r0", "r1", "r2"]\n' + rows)
    experiment = X.load_experiment(path)
    for i in range(30):
        run = tmp_path / "runs" / "many" / f"r{i}" / "quick-s0"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"train_images": 40500, "train_flops_per_image": 3e8}))
        (run / "metrics.json").write_text(json.dumps({"trial": "v2-joint-noaug", "preset": "quick", "seed": 0,
                                                           "test_accuracy": 0.8, "epochs": 3, "per_class": {}}))
        (run / "history.csv").write_text("epoch,test_accuracy\n" + "".join(f"{e},{0.7 + 0.01 * e + 0.001 * i}\n"
                                                                           for e in range(3)))
    fig = X.accuracy_against_compute([experiment], tmp_path / "runs")
    ax = fig.axes[0]
    coloured = [line for line in ax.get_lines() if line.get_color() != "0.75"]
    assert len(ax.get_lines()) == 31 and len(coloured) == 3  # 30 curves and the grey legend stand-in
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1  # entirely right of the axes
    assert len(ax.get_legend().get_texts()) == 4  # three named rows and "other rows"


def test_figures_redraws_a_run_from_its_small_files(tmp_path, capsys):
    """Per-run figures are not committed: `figures RUN` rebuilds them from config, history and metrics."""
    from cifar_ae import cli
    run = tmp_path / "run"
    shutil.copytree(RESULTS / "runs" / "v4" / "lead" / "full-s0", run, ignore=shutil.ignore_patterns("figures"))
    assert cli.main(["figures", str(run)]) == 0
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["class_distribution.png", "confusion_matrix.png",
                                                                   "curves.png"]
    assert cli.main(["figures", str(tmp_path)]) == 2 and "no config.json" in capsys.readouterr().err


def test_train_takes_an_experiment_row_into_its_own_folder(tmp_path, cifar_dir, capsys):
    """`train <file>:<row>` runs the row as defined in the folder `experiment` fills (so each reuses the other's run);
    --set makes a variant beside it; a row that does not exist is one line naming the file's rows."""
    from cifar_ae import cli
    root = tmp_path / "runs"
    assert cli.main(["train", "v4_honest:recon40", "--preset", "smoke", "--out", str(root)]) == 0
    run = root / "v4_honest" / "recon40" / "smoke-s0"
    assert json.loads((run / "metrics.json").read_text())["trial"] == "v4_honest.recon40"
    assert "v4_honest.recon40: test accuracy" in capsys.readouterr().out
    experiment = X.load_experiment(X.EXPERIMENTS_DIR / "v4_honest.toml")
    assert X.missing(experiment, ["recon40"], [0], "smoke", root) == []  # the runner sees it as done
    assert cli.main(["train", "v4_honest:recon40", "--preset", "smoke", "--out", str(root),
                     "--set", "recon_weight=[80.0, 80.0]", "--variant", "w80"]) == 0
    assert (root / "v4_honest.recon40" / "smoke-s0-w80" / "metrics.json").is_file()
    assert cli.main(["train", "v4_honest:recon40", "--preset", "smoke", "--out", str(root), "--epochs", "2"]) == 0
    other = [f for f in (root / "v4_honest.recon40").iterdir() if f.name != "smoke-s0-w80"]
    assert len(other) == 1 and json.loads((other[0] / "metrics.json").read_text())["epochs"] == 2  # not the row's
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    capsys.readouterr()
    assert cli.main(["train", "v4_honest:recon4", "--out", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no row 'recon4'" in err and "did you mean recon40" in err


def test_rows_scored_once_are_a_final_point_and_bypass_rows_say_so():
    """accuracy_against_compute: a per-epoch curve where the runs scored test every epoch, else one final point at
    the run's compute; a pixel-bypass row's label says it is one. The frontier table shows the hold-out's numbers."""
    honest = {label: points for label, _, points in X.curves(EXPERIMENTS["v4_honest"], RESULTS / "runs")}
    label, points = next((k, v) for k, v in honest.items() if "/recon40 " in k)
    run = RESULTS / "runs" / "v4_honest" / "recon40" / "full-s0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert points == [(metrics["train_pflops"], metrics["test_accuracy"])] and "[pixel bypass]" not in label
    v4 = {label: points for label, _, points in X.curves(EXPERIMENTS["v4"], RESULTS / "runs")}
    lead_label, lead = next((k, v) for k, v in v4.items() if "/lead (" in k)
    assert "[pixel bypass]" in lead_label and len(lead) > 1
    text, record = X.table(EXPERIMENTS["v4_honest"], RESULTS / "runs")
    assert "val MSE (last epoch)" in text
    row = next(r for r in record["rows"] if r["row"] == "recon40")
    last = X._history_column(run, "val_reconstruction_mse")[-1]
    assert row["val_recon_mse"] == last and row["val_accuracy_last"] == X._history_column(run, "val_label_accuracy")[-1]


def test_a_row_trained_alone_gets_what_the_runner_gives_it(monkeypatch, tmp_path):
    """run_row and the experiment runner go through one function: the row's folder, its epochs and, where the file
    scores test every epoch, that callback (so a row trained by `train FILE:ROW` draws the same curve)."""
    from cifar_ae import training
    calls = []
    monkeypatch.setattr(training, "run_trial", lambda trial, preset, seed, root, **kw: calls.append(kw) or root)
    X.run_row("v4:lead", "smoke", 0, tmp_path)
    X.run_experiment(EXPERIMENTS["v4"], rows=["lead"], seeds=[0], preset="smoke", runs_root=tmp_path)
    assert len(calls) == 2 and calls[0]["folder"] == calls[1]["folder"] == tmp_path / "v4" / "lead" / "smoke-s0"
    assert all(len(c["callbacks"]) == 1 and c["epochs"] == calls[0]["epochs"] for c in calls)


def test_the_selection_protocol_reads_the_hold_out_only_and_skips_controls():
    from cifar_ae.experiments import select_row

    def row(name, val_last, val_mse, bypass=False, test=0.5):
        return {"row": name, "val_accuracy_last": val_last, "val_recon_mse": val_mse, "pixel_bypass": bypass,
                "test_accuracy": test}
    rows = [row("bypass", 0.95, 0.001, bypass=True), row("alone", 0.94, None, bypass=None),
            row("blurry", 0.93, 0.003), row("sharp", 0.90, 0.0015, test=0.99), row("chosen", 0.91, 0.0019, test=0.1)]
    assert select_row(rows, 0.002)["row"] == "chosen"  # the bypass, the classifier alone and MSE over the bound: out
    assert select_row(rows, 0.005)["row"] == "blurry"
    assert select_row(rows, 0.001) is None
    recorded = json.loads((REPO / "results" / "v4_honest.json").read_text())
    assert recorded["selected"]["row"] == (select_row(recorded["rows"], 0.002) or {}).get("row")


def test_the_confirmation_confirms_the_hold_outs_choice_on_fresh_seeds_at_each_marks_budget():
    from cifar_ae.training import trial_flops
    confirm, selection = EXPERIMENTS["v4_confirm"], EXPERIMENTS["v4_honest"]
    chosen = json.loads((REPO / "results" / "v4_honest.json").read_text())["selected"]["row"]
    assert not set(confirm.seeds) & set(selection.seeds) and len(confirm.seeds) >= 5
    assert sorted(g["pflops"] for g in confirm.goals) == [0.15, 0.36]
    images = 7 * 5000 + 3 * 2500  # every image of the imbalanced subset: validation "none"
    assert len(confirm.rows) == len(confirm.goals)
    for row, goal in zip(confirm.rows.values(), sorted(confirm.goals, key=lambda g: g["pflops"])):
        assert row.parent == f"v4_honest:{chosen}", "the confirmation must confirm the row v4_honest's table chose"
        assert row.changes == {"validation": "none"} and row.trial.validation == "none"
        per_epoch = trial_flops(row.trial) * images / 1e15
        assert row.epochs * per_epoch <= goal["pflops"] < (row.epochs + 1) * per_epoch, (row.name, per_epoch)
        assert goal["recon_mse"] == selection.select_max_val_mse and goal["seeds"] == len(confirm.seeds)
    # the confirmation's JSON records the selection runs apart from its own, and says whether its seeds are fresh
    confirms = X.confirmed_selection(confirm, RESULTS / "runs")
    assert confirms["row"] == f"v4_honest:{chosen}" and confirms["fresh_seeds"] and confirms["runs"]
    assert all(f"/v4_honest/{chosen}/" in run for run in confirms["runs"])
    assert X.confirmed_selection(dataclasses.replace(confirm, seeds=(0, 10)), RESULTS / "runs")["fresh_seeds"] is False
    assert X.confirmed_selection(selection, RESULTS / "runs") is None  # a selection file confirms nothing


def test_the_readme_the_notebook_and_the_main_command_name_the_row_the_hold_out_chose():
    chosen = "v4_honest:" + json.loads((REPO / "results" / "v4_honest.json").read_text())["selected"]["row"]
    assert f"python -m cifar_ae train {chosen}\n" in (REPO / "README.md").read_text()
    assert f'RECIPE = \\"{chosen}\\"' in (REPO / "notebooks" / "beyond_the_study_v4.ipynb").read_text()
    assert f'NAME = "{chosen}"' in (REPO / "tools" / "time_main_command.py").read_text()
    assert f'encoder = "{chosen}"' in (REPO / "experiments" / "probes" / "probe.toml").read_text()
    assert json.loads((REPO / "results" / "main_command.json").read_text())["command"].endswith(f"train {chosen}"), \
        "rerun python tools/time_main_command.py: results/main_command.json times another row"
