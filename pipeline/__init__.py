"""geneman orchestration: cli, config schema, run store, runner, batch, preprocess, export. No math."""
