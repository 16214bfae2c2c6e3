"""Anomaly detection with the study's autoencoders: an autoencoder trained on normal images reconstructs them well
and maps them into a compact region of its feature space; an input unlike its training data should do worse on both.

| module | holds |
|---|---|
| `scores` | the scores (reconstruction MSE, 1 - SSIM, Mahalanobis variants, max softmax), `AnomalyScorer`, AUROC |
| `corruptions` | CIFAR-10-C style corruptions at severities 1-5; Ruff et al.'s contrast normalisation |
| `protocols` | one-class, held-out and corruptions, each model trained through `run_trial`; `run_protocol` |
| `report` | AUROC tables (Markdown) and figures; Deep SVDD's published one-class AUROCs |

    python -m cifar_ae anomaly --protocol one-class --preset quick   # runs/anomaly/one-class/quick-s0/

What the committed runs found is in results/anomaly_one_class.md.
"""
from .corruptions import CORRUPTION_PARAMS, CORRUPTIONS, SEVERITIES, ContrastNormalizer, corrupt, global_contrast_normalize
from .protocols import COMMON, PRESETS, PROTOCOLS, load_result, cli_command, model_trial, protocol_dir, run_protocol, settings_for
from .report import (DEEP_SVDD, DEEP_SVDD_MEAN, auroc_bars, auroc_markdown, auroc_table, corruption_examples,
                     corruption_markdown, extremes_grid, roc_curves, score_histograms, severity_curves)
from .scores import (FEATURE_SCORES, SCORES, AnomalyScorer, Gaussian, auroc, block_outputs, fit_gaussian, mahalanobis,
                     max_softmax_score, probe_model, reconstruction_mse, roc, ssim_distance)

__all__ = [
    "CORRUPTION_PARAMS",
    "CORRUPTIONS",
    "SEVERITIES",
    "ContrastNormalizer",
    "corrupt",
    "global_contrast_normalize",
    "COMMON",
    "PRESETS",
    "PROTOCOLS",
    "load_result",
    "cli_command",
    "model_trial",
    "protocol_dir",
    "run_protocol",
    "settings_for",
    "DEEP_SVDD",
    "DEEP_SVDD_MEAN",
    "auroc_bars",
    "auroc_markdown",
    "auroc_table",
    "corruption_examples",
    "corruption_markdown",
    "extremes_grid",
    "roc_curves",
    "score_histograms",
    "severity_curves",
    "FEATURE_SCORES",
    "SCORES",
    "AnomalyScorer",
    "Gaussian",
    "auroc",
    "block_outputs",
    "fit_gaussian",
    "mahalanobis",
    "max_softmax_score",
    "probe_model",
    "reconstruction_mse",
    "roc",
    "ssim_distance",
]
