"""``python -m lightning_modules.tiny --out DIR --family F [--seed 0]``: write a tiny offline checkpoint."""

import sys

from lightning_modules.tiny.build import main

sys.exit(main())
