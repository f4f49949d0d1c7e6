"""rerank-lab: lightning_modules."""
