"""A run's files, in one place: its directory (directory.py), checkpoints (checkpoint.py), metrics
files (metrics.py), writes that name the path on an OS error (files.py), and a trained run loaded
back (trained.py). Used by the engine, eval, attention and report; imports nothing above it."""
