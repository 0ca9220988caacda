"""Prefect tasks: each runs one piece of the DVC pipeline (a stage, a generation shard) or publishes results.

Tasks are small and hold no pipeline logic: DVC decides what is stale, the stage modules do the work.
"""
