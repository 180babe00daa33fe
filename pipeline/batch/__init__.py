"""Many photos as Slurm job arrays or local jobs: submission, the job itself, its boot, the batch record and status.

Keep this file empty of imports: a job's Python starts with ``python -m pipeline.batch.boot``,
which imports this package first, before anything heavy may be imported.
"""
