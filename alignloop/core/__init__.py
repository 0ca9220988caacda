"""Pure core: the synthetic task, curation, adapters, selection, budgets, ensembles, metrics, gate, typed config and
file contracts. No torch, no MLflow/DVC/Prefect: everything here is a function of its arguments and hand-testable."""
