"""``python -m bench.runner SUITE ...``: the same as ``bench run``."""

import sys

from bench.runner.cli import main

sys.exit(main())
