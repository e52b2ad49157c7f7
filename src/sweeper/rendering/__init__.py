"""Rendering: pipelines loaded once, batches rendered, outcomes encoded; the model families."""
