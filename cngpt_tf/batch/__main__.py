"""`python -m cngpt_tf.batch` (and the `cngpt-batch` script): see `cngpt_tf.batch.command`."""

import sys


def main(argv=None) -> int:
    """The command; without Apache Beam installed, one line saying how to get it (exit 2)."""
    try:
        from .command import main as command_main
    except ModuleNotFoundError as e:
        if e.name != "apache_beam":
            raise
        print("error: the batch commands need Apache Beam: pip install 'cngpt-tf[beam]'", file=sys.stderr)
        return 2
    return command_main(argv)


if __name__ == "__main__":
    sys.exit(main())
