"""Perplexity in non-overlapping windows."""

from taylorlab.evaluation.perplexity import perplexity  # noqa: F401
