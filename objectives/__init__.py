"""rerank-lab: objectives."""
