"""Prefect flows over the DVC pipeline: the whole pipeline, one round, and the deployments that serve them."""
