"""One run folder: session (start / resume under the lock), runner, run store, step checkpoints,
stop signals, progress, preprocess, the run's networks, export."""
