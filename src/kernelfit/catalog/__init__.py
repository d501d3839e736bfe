"""catalog: the rules — attention implementations, dtypes, torch builds, packages, model
families — as data plus small functions, each rule with its source (`sources.py`). No torch."""
