"""Honest evaluation: a model (or the shipped 2021 predictions) beside the baselines, with thresholds chosen
on validation and applied to test, written as report.md, metrics.json and PNG plots.

    python -m convlstm_jax.evaluate --reference ../shared/reference/fish2021 --out DIR
    python -m convlstm_jax.evaluate --checkpoint PATH [--select best_auc] [--member best] --out DIR

Every predictor is scored on the same frames. Thresholds (max accuracy, max Youden J) are chosen on the
validation split wherever validation scores exist; the 2021 models shipped only test predictions, so theirs
can only be chosen on test, and the report labels them so.

The package: `core` (predictors, scoring, thresholds, bootstrap intervals), `reference` (the 2021
reproduction), `model` (a checkpoint on its data), `plots` (the figures), `report` (report.md and the output
folder) and `cli` (the command line).
"""
