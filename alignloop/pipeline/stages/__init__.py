"""DVC stage entry points: ``python -m alignloop.pipeline.stages.<name>``. Each reads params and inputs, calls the
pure core, writes its outputs atomically and logs one MLflow run."""
