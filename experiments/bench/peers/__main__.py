"""``python -m experiments.bench.peers``: rerank-lab against sentence-transformers (see the package docstring)."""

import sys

from experiments.bench.peers.runner import main

sys.exit(main())
