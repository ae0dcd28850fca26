"""Run the command line as `python -m flagmetrics`."""

from __future__ import annotations

import sys

from flagmetrics.cli import main

if __name__ == "__main__":
    sys.exit(main())
