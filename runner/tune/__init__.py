"""`divrun-tune`: fair comparisons of methods by an equal-budget hyperparameter search on held-out training data.

spec.py (what a tune is, tune.json), study.py (Optuna studies, trials as divrun runs, resume, workers),
report.py (re-runs of the winners and defaults on test, the comparison files), expected_max.py (Dodge et al.'s
expected best score against the budget), cli.py (the command). The spaces come from the options' YAML
(runner/search_space.py); the holdout split from `dataset.holdout` (runner/data.py).
"""
