"""`charlm tune`: a search for training recipes on Optuna (space, study, trials, report).

Kept free of imports so that a trial's process (charlm.tune.child) starts without optuna.
"""
