"""lm-evaluation-harness task YAMLs (`--include_path unlearning/evaluation/tasks`); a package so the
Python their `!function`s name ships with them."""
