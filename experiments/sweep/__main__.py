"""``python -m experiments.sweep``: run a sweep YAML (see the package docstring)."""

import sys

from experiments.sweep import main

if __name__ == "__main__":
    sys.exit(main())
