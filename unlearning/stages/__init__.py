"""The stages of a protocol: their inputs, cache, training loop, and the stages themselves."""
