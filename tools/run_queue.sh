#!/usr/bin/env bash
# One CPU-heavy job at a time, in the background, for runs that take hours:
#   CIFAR10_DIR=../shared/cifar10 setsid nohup tools/run_queue.sh JOBS_FILE LOG_DIR >> LOG_DIR/queue.log 2>&1 &
# JOBS_FILE has one job a line, "name | command" (e.g. "alone | python -m cifar_ae experiment
# experiments/v4_honest.toml --rows alone --seeds 0 --preset full --runs runs"). The first line runs, then is dropped,
# so the file is what is still pending: edit it to reorder. A killed job resumes from its checkpoint when run again.
# After each job, every complete run under runs/<experiment> is kept in results/runs and committed, only its files
# (tools/keep_runs.py), so a session that ends loses at most the job in flight. WAIT_PID: start after that process.
# NO_KEEP=1: keep and commit nothing (e.g. after the last verified commit of a session); the next run keeps them.
set -u
jobs_file=$(realpath "$1"); log_dir=$(realpath "$2")
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
keep() {
  [ -n "${NO_KEEP:-}" ] && return
  for exp in runs/*/; do
    exp=${exp%/}
    [ -f "experiments/$(basename "$exp").toml" ] && python tools/keep_runs.py "$exp" --runs runs --commit >> "$log_dir/keep.log" 2>&1
  done
}
if [ -n "${WAIT_PID:-}" ]; then while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 20; done; keep; fi
while true; do
  job=$(head -n1 "$jobs_file")
  [ -z "$job" ] && break
  name=$(echo "$job" | cut -d'|' -f1 | xargs); cmd=$(echo "$job" | cut -d'|' -f2-)
  echo "=== $name $(date -u +%FT%TZ)"
  bash -c "$cmd" > "$log_dir/$name.log" 2>&1
  echo "=== $name done rc=$? $(date -u +%FT%TZ)"
  sed -i '1d' "$jobs_file"
  keep
done
