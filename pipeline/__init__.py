"""geneman orchestration, no math.

cli/ the commands, run/ one run folder, batch/ many photos; beside them the config schema, errors and logging.
"""
