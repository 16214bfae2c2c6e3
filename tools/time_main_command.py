"""Dev script: time the README's main command as a new user would (a fresh clone, an empty data cache, run alone)
with /usr/bin/time -v, and write results/main_command.json from what it printed; its run's small files go to
results/runs/main/. `--from-log LOG --run RUN` records a measurement already taken the same way.

    python tools/time_main_command.py            # clones HEAD into a temporary folder and runs it there
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "v4_honest:recon80"  # the honest joint recipe the hold-out chose, an experiment row (experiments/v4_honest.toml)
COMMAND = ["python", "-m", "cifar_ae", "train", NAME]
TRIAL = NAME.replace(":", ".")  # the row's trial name, what the command prints its line under
FOLDER = Path(*NAME.split(":")) / "quick-s0"  # the row's own run folder under the runs root


def parse(log: str) -> dict:
    def field(name):
        m = re.search(rf"^\s*{re.escape(name)}: (.*)$", log, re.M)
        return m.group(1).strip() if m else None
    printed = [line for line in log.splitlines() if line.startswith(f"{TRIAL}: ")]
    return {"wall_clock": field("Elapsed (wall clock) time (h:mm:ss or m:ss)"),
            "user_seconds": float(field("User time (seconds)")), "system_seconds": float(field("System time (seconds)")),
            "max_rss_kb": int(field("Maximum resident set size (kbytes)")), "exit_status": int(field("Exit status")),
            "printed": printed[-1] if printed else None}


def record(log: str, run: Path, machine: dict) -> Path:
    sys.path.insert(0, str(REPO))
    from cifar_ae.evaluate import write_json_atomic
    dest = REPO / "results" / "runs" / "main" / TRIAL / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "history.csv", "metrics.json"):
        shutil.copy2(run / name, dest / name)
    result = {"command": " ".join(COMMAND), "measured_with": "/usr/bin/time -v in a fresh clone, empty data cache "
              "(CIFAR_AE_CACHE), CIFAR10_DIR=../shared/cifar10", **parse(log), "machine": machine,
              "run_files": str(dest.relative_to(REPO))}
    out = REPO / "results" / "main_command.json"
    write_json_atomic(out, result)
    from cifar_ae.completeness import write_manifest
    write_manifest(REPO / "results" / "runs")  # the new record's digests, as keep_runs writes them
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-log", type=Path, default=None)
    ap.add_argument("--run", type=Path, default=None, help="with --from-log: the run folder it wrote")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from cifar_ae.hardware import describe
    if args.from_log:
        print(record(args.from_log.read_text(), args.run, describe()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {**os.environ, "CIFAR10_DIR": str((REPO / ".." / "shared" / "cifar10").resolve()),
               "CIFAR_AE_CACHE": str(Path(tmp) / "cache"), "CIFAR_AE_RUNS": str(Path(tmp) / "runs")}
        done = subprocess.run(["/usr/bin/time", "-v", *COMMAND], cwd=clone, env=env, capture_output=True, text=True)
        log = done.stdout + done.stderr
        print(record(log, Path(tmp) / "runs" / FOLDER, describe()))


if __name__ == "__main__":
    main()
