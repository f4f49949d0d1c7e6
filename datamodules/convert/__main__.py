"""``python -m datamodules.convert``: see :mod:`datamodules.convert`."""

import sys

from datamodules.convert.cli import main

sys.exit(main())
