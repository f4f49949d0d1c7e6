"""rerank-lab: experiments."""
