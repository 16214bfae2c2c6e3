"""Hyperparameter search with keras-tuner: random, Bayesian or Hyperband, one process or chief + workers.

    python -m cifar_ae tune --tuner bayesian --max-trials 10 --preset quick           # one process
    python -m cifar_ae tune --tuner random --max-trials 8 --preset smoke --overwrite   # start over

What is searched (`joint_space`, `classifier_space`): the number of encoder blocks and convs per block, base
filters, kernel size, head blocks and width, dropout, reconstruction loss weight (joint model), optimizer with
its own learning-rate range, batch size (chosen in `HyperModel.fit`, which builds an `ArrayBatches` of that
size) and class weighting.

Honest objective: every trial is scored on a stratified hold-out split of the imbalanced training subset
(`training.prepare_data`, the same split `train` uses for the same preset and seed), never on the test set.
The score is the validation *balanced* accuracy (mean per-class recall): the test set is balanced while the
hold-out keeps the training imbalance, so plain validation accuracy would reward ignoring bird/deer/truck.
The test set is scored once, for the best configuration, when the search ends.

State lives in keras-tuner's project directory, runs/tuning/<model>-<tuner>-<preset>-s<seed>: rerunning the
same command continues the search (an interrupted trial is retried), `--overwrite` starts over, and a larger
`--max-trials` extends it. keras-tuner clears the Keras session before each build; we clear it again after
each trial, so memory stays flat (each trial records its process RSS).

Distributed (keras-tuner's chief/worker mode over gRPC): one chief holds the oracle, workers ask it for trials.

    python -m cifar_ae tune --tuner bayesian --max-trials 20 --chief --oracle-ip 0.0.0.0 --oracle-port 8000
    python -m cifar_ae tune --tuner bayesian --max-trials 20 --worker 0 --oracle-ip CHIEF_HOST --oracle-port 8000
    python -m cifar_ae tune --tuner bayesian --max-trials 20 --worker 1 --oracle-ip CHIEF_HOST --oracle-port 8000

The flags only set keras-tuner's own variables KERASTUNER_TUNER_ID ("chief" / "worker<ID>"),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT, which may be exported instead. Give every process the same
search arguments and the same project directory (a shared filesystem across machines: workers write the
trial checkpoints that the chief scores on the test set at the end, and Hyperband resumes from them).

| module | holds |
|---|---|
| `space` | the search spaces and the grid, how a point maps to `models.joint_model` / `feature_classifier`, the objective (validation balanced accuracy), the HyperModels |
| `search` | the tuners, resume, process recycling, `run_search`, and the end: best re-scored, test set scored once, results written |
| `distributed` | chief/worker setup (loopback unless `--allow-remote-workers`) and `TrialGuard`, the chief's checks on every report |
| `report` | the trials' table and figure, `tuning.md`, the tuned trial saved for `train NAME` |
"""
from .distributed import TrialGuard, TrialRefused, configure_distributed, guard, in_space
from .report import SIDECAR, collect_trials, save_tuned_trial, scores_figure, trials_markdown, tuned_trial_record
from .search import TUNERS, finalize, make_tuner, project_name, rescore_best, run_search, tuning_dir
from .space import (HYPERMODELS, MODELS, OVERLAYS, TRIAL_BN_MOMENTUM, UPSTREAM, BalancedAccuracy,
                    FeatureClassifierHyperModel, JointHyperModel, classifier_grid, classifier_model_args,
                    classifier_space, joint_grid, joint_model_args, joint_space, search_settings)

__all__ = [
    "TrialGuard",
    "TrialRefused",
    "configure_distributed",
    "guard",
    "in_space",
    "SIDECAR",
    "collect_trials",
    "save_tuned_trial",
    "scores_figure",
    "trials_markdown",
    "tuned_trial_record",
    "TUNERS",
    "finalize",
    "make_tuner",
    "project_name",
    "rescore_best",
    "run_search",
    "tuning_dir",
    "HYPERMODELS",
    "MODELS",
    "OVERLAYS",
    "TRIAL_BN_MOMENTUM",
    "UPSTREAM",
    "BalancedAccuracy",
    "FeatureClassifierHyperModel",
    "JointHyperModel",
    "classifier_grid",
    "classifier_model_args",
    "classifier_space",
    "joint_grid",
    "joint_model_args",
    "joint_space",
    "search_settings",
]
