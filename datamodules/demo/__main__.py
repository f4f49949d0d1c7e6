"""``python -m datamodules.demo --out DIR [--seed 0]``: build the demo benchmark."""

import sys

from datamodules.demo.build import main

sys.exit(main())
