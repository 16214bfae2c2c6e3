"""The frozen-feature linear probe (issue 44): every row of the probe file builds its features and fits on smoke.
The rows run in three groups (tests), so the suite's workers share them."""
import json

import pytest

from cifar_ae import cli
from cifar_ae.probe import PROBES_DIR, load_probe

PATH = PROBES_DIR / "probe.toml"
GROUPS = {"controls-and-v0": ["pixels", "pca-768", "pca-4096", "random-v1", "v0"],
          "v1-and-v3": ["v1", "v1-one-conv", "v3-ae"],
          "joint": ["v2-joint", "v4-honest", "v4-alone"]}


def test_the_groups_cover_every_row_of_the_probe_file():
    assert sorted(r for rows in GROUPS.values() for r in rows) == sorted(load_probe(PATH).rows)


def _probe(tmp_path, rows):
    return cli.main(["probe", str(PATH), "--preset", "smoke", "--seeds", "0", "--runs", str(tmp_path),
                     "--tables", str(tmp_path / "tables"), "--rows", *rows])


@pytest.mark.parametrize("group", GROUPS)
def test_every_probe_row_builds_its_features_and_fits_on_smoke(group, cifar_dir, tmp_path, capsys):
    rows = GROUPS[group]
    assert _probe(tmp_path, rows) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    record = json.loads((tmp_path / "tables" / "probe.json").read_text())
    assert [r["row"] for r in record["rows"]] == rows
    for r in record["rows"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["C"][0] in load_probe(PATH).C, r
        assert r["dimensions"] >= 1 and set(r["recall"]) >= {"bird", "deer", "truck"}
    dims = {r["row"]: r["dimensions"] for r in record["rows"]}
    if group == "controls-and-v0":
        assert dims["pixels"] == 3072 and dims["v0"] == 768
        assert dims["pca-4096"] <= 256  # capped by the smoke training set's rank, and said so in its config
        config = json.loads((tmp_path / "probe" / "probe" / "pca-4096" / "smoke-s0" / "config.json").read_text())
        assert config["features"]["components_asked"] == 4096
        # a second call fits nothing: every probe folder is reused, and the table is the same
        before = (tmp_path / "tables" / "probe.md").read_text()
        assert _probe(tmp_path, rows) == 0
        assert "[probe " not in capsys.readouterr().out
        assert (tmp_path / "tables" / "probe.md").read_text() == before
    if group == "v1-and-v3":
        assert dims["v1"] == dims["v1-one-conv"] == 8 * 8 * 64


def test_a_row_names_its_encoders_runs_and_a_bad_one_is_a_one_line_error(tmp_path):
    from cifar_ae.probe import ProbeError, at_preset
    probe = load_probe(PATH)
    assert probe.rows["v4-honest"].preset == "full" and probe.rows["v4-honest"].seeds == (0,)
    assert at_preset(probe, "smoke").rows["v4-honest"].preset is None  # --preset smoke runs every encoder at smoke
    assert at_preset(probe, "smoke").max_iter == 20 and at_preset(probe, "full").max_iter == probe.max_iter
    # the study's v0 and v1 codes are read from the study table's runs, trained once for both
    assert (probe.rows["v1"].runs, probe.rows["v1"].variant, probe.rows["v2-joint"].runs) == ("study", "as-built", "study")
    for row, said in (('features = "encoder"\nencoder = "v0-mlp-ae"\npreset = "fast"', "preset must be one of"),
                      ('features = "pixels"\npreset = "full"', "a pixels row has no encoder"),
                      ('features = "encoder"\nencoder = "v4_honest:recon80"\nepochs = 3', "epochs caps a registered"),
                      ('features = "encoder"\nencoder = "v4_honest:recon80"\nvariant = "b"', "runs and variant find a"),
                      ('features = "encoder"\nencoder = "v0-mlp-ae"\nruns = "../elsewhere"', "runs is a folder under"),
                      ('features = "encoder"\nencoder = "v0-mlp-ae"\nvariant = "as built"', "variant")):
        bad = tmp_path / "bad.toml"
        bad.write_text(f'preset = "study"\n[rows.r]\n{row}\n')
        with pytest.raises(ProbeError, match=said) as caught:
            load_probe(bad)
        assert "\n" not in str(caught.value)


def test_a_notebook_shows_its_probe_rows_from_the_generated_table(tmp_path, capsys):
    from cifar_ae import notebooks as nb
    (tmp_path / "probe.md").write_text("# t\n\n| row | features |\n|---|---|\n| pixels | pixels |\n| v0 | encoder |\n")
    shown = nb.probe_table(tmp_path, ["v0", "random-v1"]).data
    assert "| v0 | encoder |" in shown and "pixels" not in shown and shown.startswith("| row |")
    assert "not probed yet: random-v1" in capsys.readouterr().out
    assert nb.probe_table(tmp_path / "nowhere", ["v0"]) is None
    assert "no " in capsys.readouterr().out


def test_a_fitted_probe_is_reused_only_for_the_row_that_made_it(tmp_path):
    from cifar_ae.probe import ProbeRow, _made_by
    probe = load_probe(PATH)
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"C": list(probe.C), "max_iter": probe.max_iter, "features": {
        "kind": "encoder", "encoder": "v4_honest:recon80", "encoder_preset": "full", "encoder_epochs": None}}))
    row = ProbeRow("v4-honest", "", "encoder", encoder="v4_honest:recon80", preset="full")
    assert _made_by(folder, row, probe)
    assert not _made_by(folder, ProbeRow("v4-honest", "", "encoder", encoder="v4_honest:recon40", preset="full"), probe)
    assert not _made_by(folder, ProbeRow("v4-honest", "", "encoder", encoder="v4_honest:recon80"), probe)
    assert not _made_by(folder, ProbeRow("v4-honest", "", "encoder", encoder="v4_honest:recon80", preset="full",
                                         variant="as-built"), probe)  # another encoder run
    (folder / "config.json").write_text("{not json")
    assert not _made_by(folder, row, probe)
