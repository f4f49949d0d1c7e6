"""``python -m experiments.report``: see the package docstring."""

import sys

from experiments.report.cli import main

sys.exit(main())
