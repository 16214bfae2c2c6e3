"""Dev script, not the package: copy finished runs' small files (config.json, history.csv, metrics.json) from a runs
root into results/runs, keeping <experiment>/<row>/<preset>-s<seed>, and commit each one, so a long job killed
mid-way keeps what it measured. results/runs/SHA256SUMS records the kept files' sha256 (report checks them). Run it beside a long experiment, e.g. every few minutes:

    python tools/keep_runs.py runs/v4 --commit        # then: python -m cifar_ae report --index
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

SMALL_FILES = ("config.json", "history.csv", "metrics.json")
REPO = Path(__file__).resolve().parent.parent


def keep(run, runs_root, dest_root) -> Path:
    """Copy one run's small files to dest_root, keeping its path below runs_root; returns the copy's folder."""
    run, runs_root, dest_root = Path(run), Path(runs_root), Path(dest_root)
    dest = check_keepable(run, _key_digest(run), runs_root, dest_root)
    dest.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    return dest


def check_keepable(run, key_digest, runs_root, dest_root) -> Path:
    """Where `run` would be kept; SystemExit if a record of another run is there (it is never overwritten)."""
    dest = Path(dest_root) / Path(run).relative_to(runs_root)
    theirs = _key_digest(dest)
    if theirs is not None and key_digest != theirs:
        raise SystemExit(f"{dest} keeps another run (key {theirs}; this one is {key_digest}): train this one into "
                         "another folder (a variant, e.g. tools/study_runs.py --variant NAME) rather than over it")
    return dest


def _key_digest(run):
    import json
    try:
        return json.loads((Path(run) / "config.json").read_text()).get("key_digest")
    except (OSError, ValueError, AttributeError):
        return None


def commit(paths, message):
    """Commit only these paths (other work stays unstaged); a resumed job meeting an unchanged run commits nothing."""
    rel = [str(p) for p in paths]
    subprocess.run(["git", "-C", str(REPO), "add", "--", *rel], check=True)
    if subprocess.run(["git", "-C", str(REPO), "diff", "--cached", "--quiet", "--", *rel]).returncode:
        subprocess.run(["git", "-C", str(REPO), "commit", "-q", "-m", message, "--", *rel], check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a runs root or a folder under it, e.g. runs/v4")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="the runs root the folder lies under")
    ap.add_argument("--dest", type=Path, default=REPO / "results" / "runs")
    ap.add_argument("--commit", action="store_true", help="commit each kept run at once (only its files)")
    args = ap.parse_args(argv)
    from cifar_ae.completeness import run_status, write_manifest
    for metrics in sorted(args.folder.glob("**/metrics.json")):
        run = metrics.parent
        if run_status(run).state != "complete":  # only a checked, sealed run is kept (cifar_ae.completeness)
            continue
        dest = args.dest / run.relative_to(args.runs)
        if all((dest / n).is_file() and (dest / n).read_bytes() == (run / n).read_bytes() for n in SMALL_FILES):
            continue  # kept already, unchanged
        kept = keep(run, args.runs, args.dest)
        manifest = write_manifest(args.dest)  # the kept files' sha256, checked by report and compare
        print(f"kept {kept}")
        if args.commit:
            commit([kept, manifest], f"results: {kept.relative_to(args.dest)}")


if __name__ == "__main__":
    main()
