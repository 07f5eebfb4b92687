"""``python -m aen_mini``: the command line (aen_mini.run.cli)."""
import sys

from aen_mini.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
