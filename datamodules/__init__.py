"""rerank-lab: datamodules."""
