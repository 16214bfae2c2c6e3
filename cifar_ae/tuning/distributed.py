"""keras-tuner's chief/worker mode, made safe: the chief binds loopback unless told otherwise, and its oracle
checks every report a peer sends (keras-tuner's gRPC has no authentication). See README, "Distributed search".
"""
from __future__ import annotations

import math
import os
import sys
import time


class TrialRefused(ValueError):
    """A trial report the oracle did not ask for: unknown trial, changed or out-of-space values, bad metrics."""


def in_space(hp_space, values) -> str | None:
    """Why `values` is not a point of the search space (None if it is): unknown names, or a value outside its
    hyperparameter's choices, range or step."""
    by_name = {p.name: p for p in hp_space}
    for name, value in values.items():
        if name.startswith("tuner/"):  # Hyperband's own bookkeeping, checked against what was handed out
            continue
        p = by_name.get(name)
        if p is None:
            return f"unknown hyperparameter {name!r}"
        kind = type(p).__name__
        if kind in ("Choice", "Boolean", "Fixed"):
            allowed = {"Choice": lambda: list(p.values), "Boolean": lambda: [True, False],
                       "Fixed": lambda: [p.value]}[kind]()
            if value not in allowed:
                return f"{name}={value!r} is not one of {list(allowed)}"
        elif kind in ("Int", "Float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
                    p.min_value <= value <= p.max_value):
                return f"{name}={value!r} is outside [{p.min_value}, {p.max_value}]"
            if p.step is not None and getattr(p, "sampling", "linear") in (None, "linear"):
                k = (value - p.min_value) / p.step
                if abs(k - round(k)) > 1e-6:
                    return f"{name}={value!r} is off its step {p.step}"
    return None


def _expiring(name):
    """An oracle attribute whose every read first expires the trials and tuners that went silent."""
    def get(self):
        self._expire()
        return self.__dict__[name]

    def set(self, value):
        self.__dict__[name] = value
    return property(get, set)


class TrialGuard:
    """Oracle mixin for the chief: keras-tuner's gRPC service has no authentication, so every report is checked.

    - UpdateTrial / EndTrial must name a trial this oracle handed out and that is still running;
    - EndTrial's hyperparameters must equal the values handed out for it, and lie in the search space;
    - metric values must be finite, and the objective (a balanced accuracy) within [0, 1];
    - UpdateSpace may not add hyperparameters once the space is declared;
    - a running trial with no report for `trial_timeout` seconds is expired (sent for retry), and a tuner id
      silent that long is forgotten, so a peer that takes trials and never ends them cannot hang the chief.
    A refused report raises TrialRefused inside the gRPC handler: the peer gets an error, the search goes on.
    What it cannot stop is a worker that runs a handed-out trial and reports a made-up score: so the chief
    re-scores the best configurations itself before anything is saved (finalize).
    """
    trial_timeout = 3600.0

    # keras-tuner's chief polls these two to decide when to exit: reading them expires the silent ones first
    tuner_ids = _expiring("tuner_ids")
    ongoing_trials = _expiring("ongoing_trials")

    def _guard_state(self):
        if "_handed_out" not in self.__dict__:
            self._handed_out, self._alive, self.refused = {}, {}, []
        return self

    def _refuse(self, why):
        self._guard_state().refused.append(why)
        print(f"[tune] refused a trial report: {why}", flush=True)
        raise TrialRefused(why)

    def _expire(self):
        d = self.__dict__
        if "_handed_out" not in d or "ongoing_trials" not in d:
            return
        now = time.time()
        for tuner_id, trial in list(d["ongoing_trials"].items()):
            if now - self._alive.get(tuner_id, now) > self.trial_timeout:
                print(f"[tune] trial {trial.trial_id} of {tuner_id}: no report for {self.trial_timeout:.0f} s; "
                      "expired and sent for retry", flush=True)
                d["ongoing_trials"].pop(tuner_id)
                trial.status = "INVALID"
                if trial.trial_id not in self._retry_queue:
                    self._retry_queue.append(trial.trial_id)
        for tuner_id, seen in list(self._alive.items()):
            if now - seen > self.trial_timeout and tuner_id not in d["ongoing_trials"]:
                d["tuner_ids"].discard(tuner_id)
                self._alive.pop(tuner_id)

    def create_trial(self, tuner_id):
        self._guard_state()
        trial = super().create_trial(tuner_id)
        self._alive[tuner_id] = time.time()
        if trial.status == "RUNNING":
            self._handed_out[trial.trial_id] = dict(trial.hyperparameters.values)
        return trial

    def _runner(self, trial_id):
        """The tuner id running this trial, or None."""
        return next((tid for tid, t in self.__dict__["ongoing_trials"].items() if t.trial_id == trial_id), None)

    def update_space(self, hyperparameters):
        """The space is the hypermodel's, declared before the chief serves anyone: nobody may widen it later."""
        known = {p.name for p in self.hyperparameters.space}
        new = sorted({p.name for p in hyperparameters.space} - known)
        if known and new:
            self._refuse(f"UpdateSpace would add {new} to the search space")
        return super().update_space(hyperparameters)

    def update_trial(self, trial_id, metrics, step=0):
        self._guard_state()
        runner = self._runner(trial_id)
        if trial_id not in self._handed_out or runner is None:
            self._refuse(f"UpdateTrial for trial {trial_id!r}, which this chief is not running")
        for name, value in dict(metrics).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                self._refuse(f"trial {trial_id}: metric {name}={value!r} is not a finite number")
        objective = self.objective.name if hasattr(self.objective, "name") else None
        if objective in metrics and not 0.0 <= float(metrics[objective]) <= 1.0:
            self._refuse(f"trial {trial_id}: {objective}={metrics[objective]} is outside [0, 1]")
        self._alive[runner] = time.time()
        return super().update_trial(trial_id, metrics, step=step)

    def end_trial(self, trial):
        self._guard_state()
        handed = self._handed_out.get(trial.trial_id)
        if handed is None or self._runner(trial.trial_id) is None:
            self._refuse(f"EndTrial for trial {trial.trial_id!r}, which this chief did not hand out or is not running")
        values = dict(trial.hyperparameters.values)
        why = in_space(self.hyperparameters.space, values)
        if why:
            self._refuse(f"EndTrial for trial {trial.trial_id}: {why}")
        if {k: v for k, v in values.items() if k in handed} != handed or set(values) - set(handed):
            self._refuse(f"EndTrial for trial {trial.trial_id}: hyperparameters differ from the ones handed out")
        return super().end_trial(trial)


def guard(oracle, trial_timeout=None):
    """Give an oracle the TrialGuard checks (its class gains the mixin; state and behaviour are otherwise kept)."""
    if not isinstance(oracle, TrialGuard):
        oracle.__class__ = type(f"Guarded{type(oracle).__name__}", (TrialGuard, type(oracle)), {})
    if trial_timeout is not None:
        oracle.trial_timeout = float(trial_timeout)
    return oracle


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _is_loopback(address) -> bool:
    import ipaddress
    if address in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def configure_distributed(chief=False, worker=None, oracle_ip=None, oracle_port=None, allow_remote=False) -> str:
    """Set keras-tuner's KERASTUNER_* variables from the flags (flags win); returns 'single', 'chief' or 'worker'.

    The chief binds KERASTUNER_ORACLE_IP. keras-tuner's gRPC has no authentication or encryption, so anything but
    loopback needs allow_remote (--allow-remote-workers) and gets a warning: reach the chief over an SSH tunnel
    or a private network only (README, "Distributed search").
    """
    if chief and worker is not None:
        raise ValueError("--chief and --worker are exclusive: run one chief and one process per worker.")
    if chief:
        os.environ["KERASTUNER_TUNER_ID"] = "chief"
    elif worker is not None:
        tuner_id = f"worker{worker}" if str(worker).isdigit() else str(worker)
        if "chief" in tuner_id:  # keras-tuner treats any id containing "chief" as the chief
            raise ValueError(f"worker id '{worker}' must not contain 'chief'.")
        os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    if oracle_port is not None:
        os.environ["KERASTUNER_ORACLE_PORT"] = str(int(oracle_port))
    if oracle_ip is not None:
        os.environ["KERASTUNER_ORACLE_IP"] = str(oracle_ip)
    elif chief or worker is not None:
        os.environ.setdefault("KERASTUNER_ORACLE_IP", "127.0.0.1")
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    if "KERASTUNER_ORACLE_PORT" not in os.environ:
        raise ValueError("distributed tuning needs --oracle-port (or KERASTUNER_ORACLE_PORT).")
    if "KERASTUNER_TUNER_ID" not in os.environ:
        raise ValueError("distributed tuning needs --chief or --worker ID (or KERASTUNER_TUNER_ID).")
    role = "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"
    address = os.environ["KERASTUNER_ORACLE_IP"]
    if role == "chief" and not _is_loopback(address):
        if not allow_remote:
            raise ValueError(f"the chief would listen on {address}, beyond this machine, and keras-tuner's gRPC has "
                             "no authentication; bind 127.0.0.1 and reach it through an SSH tunnel, or pass "
                             "--allow-remote-workers on a private network.")
        print(f"[tune] WARNING: the chief listens on {address}:{os.environ['KERASTUNER_ORACLE_PORT']} without "
              "authentication or encryption: anyone who can reach that port can read the search and report "
              "trials. Every report is checked against what the chief handed out, and the best configurations are "
              "re-scored here; still, expose it on a private network only.", file=sys.stderr, flush=True)
    return role
