"""The pipeline layer: the data/ layout, stage specs, dvc.yaml rendering, stage entry points, MLflow tracking and
the model registry."""
