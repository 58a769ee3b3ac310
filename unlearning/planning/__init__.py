"""`unlearn-plan`: the memory a run needs per rank, from model configs alone (no weights loaded), so that a
multi-hour launch that cannot fit is caught before it starts: shapes.py (parameter counts from config.json),
memory.py (the terms and the activation formula), stages.py (a config's stages, hardware, batches), cli.py."""
