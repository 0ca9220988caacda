"""ML code: models, tokenizers, sampling, reward scoring, backends, training helpers and the PPO loop
(torch/transformers/TRL). Knows nothing of the data/ layout: paths come in as arguments."""
