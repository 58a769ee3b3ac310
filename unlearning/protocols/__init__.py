"""The protocols `conf/protocol/` selects: short scripts over an Experiment, its stages and Evaluator."""
