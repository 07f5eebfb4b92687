"""``python -m aen_mini`` (and the ``aen-mini`` script): the run commands of aen_mini.run.cli, plus ``sweep``.

The entry point sits above every layer, so it may start an experiment; the run layer below it may not.
"""
from __future__ import annotations

import sys
from typing import Sequence

from aen_mini.run import cli


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        from aen_mini.experiments.sweep import main as sweep_main

        sweep_main(argv[1:], prog="python -m aen_mini sweep")
        return 0
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
