"""The command line: ``geneman`` and its sub-commands (:mod:`pipeline.cli.main`), argument helpers, the status table."""
