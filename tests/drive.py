"""Run the real CLI machinery with the test-double stages, in a subprocess of a test.

    python -m tests.drive run PHOTO OUT [--set k=v ...]
    python -m tests.drive resume OUT
    python -m tests.drive batch ARGS...      (`geneman batch ARGS` through the real CLI, test-double stages)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import GenemanError
from pipeline.logs import setup_logging
from pipeline.run import session
from tests.doubles import double_stages, small_config


def batch(argv: list[str]) -> int:
    """``geneman batch ARGV`` (the real CLI) whose jobs run the test-double stages with the small config."""
    import functools

    from pipeline.batch import submit
    from pipeline.cli.main import main as cli_main
    from tests.pipeline.batch_helpers import no_priors

    real = submit.submit_batch

    def with_doubles(inputs, out, cfg, options, quiet=False):
        return real(inputs, out, small_config(), options, stages=double_stages(), priors_factory=no_priors, quiet=quiet)

    submit.submit_batch = functools.wraps(real)(with_doubles)
    return cli_main(["batch", *argv])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        return batch(argv[1:])
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=("run", "resume"))
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args(argv)
    setup_logging(False, True)
    try:
        if args.command == "run":
            session.start(args.paths[0], args.paths[1], small_config(args.sets), stages=double_stages(), priors=None,
                          depth_normal=None, quiet=True)
        else:
            session.resume(args.paths[0], stages=double_stages(), priors=None, depth_normal=None, quiet=True)
    except GenemanError as e:
        print(f"geneman: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
