"""``python -m experiments.bench``: the training and inference benchmark (see :mod:`experiments.bench`)."""

import sys

from experiments.bench.runner import main

sys.exit(main())
