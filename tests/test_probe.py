"""The frozen-feature linear probe (issue 44): every row of the probe file builds its features and fits on smoke."""
import json

from cifar_ae import cli
from cifar_ae.probe import PROBES_DIR, load_probe


def test_every_probe_row_builds_its_features_and_fits_on_smoke(cifar_dir, tmp_path, capsys):
    path = PROBES_DIR / "linear_probe.toml"
    rows = list(load_probe(path).rows)
    assert cli.main(["probe", str(path), "--preset", "smoke", "--seeds", "0", "--runs", str(tmp_path),
                     "--tables", str(tmp_path / "tables")]) == 0, capsys.readouterr().err[-2000:]
    record = json.loads((tmp_path / "tables" / "linear_probe.json").read_text())
    assert [r["row"] for r in record["rows"]] == rows
    for r in record["rows"]:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["C"][0] in (0.001, 0.01, 0.1, 1.0), r
        assert r["dimensions"] >= 1 and set(r["recall"]) >= {"bird", "deer", "truck"}
    dims = {r["row"]: r["dimensions"] for r in record["rows"]}
    assert dims["pixels"] == 3072 and dims["v1-as-built"] == 8 * 8 * 64 and dims["v0"] == 768
    assert dims["pca-4096"] <= 256  # capped by the smoke training set's rank, and said so in its config
    config = json.loads((tmp_path / "probe" / "linear_probe" / "pca-4096" / "smoke-s0" / "config.json").read_text())
    assert config["features"]["components_asked"] == 4096
    # a second call fits nothing: every probe folder is reused, and the table is the same
    before = (tmp_path / "tables" / "linear_probe.md").read_text()
    assert cli.main(["probe", str(path), "--preset", "smoke", "--seeds", "0", "--runs", str(tmp_path),
                     "--tables", str(tmp_path / "tables")]) == 0
    assert "[probe " not in capsys.readouterr().out and (tmp_path / "tables" / "linear_probe.md").read_text() == before
