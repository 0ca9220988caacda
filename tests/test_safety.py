"""Safety: checkpoint code runs only when params say so, and secrets in the environment never reach MLflow.

(Safetensors-only loading has its own tests in test_modeling.py: a directory holding only pytorch_model.bin is
refused, by the loader and by the base stage.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from alignloop.core.config import ConfigError, ModelConfig
from alignloop.ml.modeling import build_tiny_model, load_causal_lm, load_reward_model, train_tokenizer

CUSTOM_CODE = '''
import pathlib
pathlib.Path(MARKER).write_text("the checkpoint's own code was imported")
from transformers import LlamaConfig, LlamaForCausalLM
class CustomConfig(LlamaConfig):
    model_type = "custom_llama"
class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.fixture(scope="module")
def remote_code_dir(tmp_path_factory) -> Path:
    """A checkpoint in hub layout whose config asks for its own modelling code (auto_map), like many hub repos."""
    from alignloop.core.config import ArchConfig

    d = tmp_path_factory.mktemp("remote") / "custom-model"
    tok = train_tokenizer(["a small corpus for a small tokenizer"] * 20, vocab_size=300)
    arch = ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=300)
    build_tiny_model(arch, tok, max_length=32, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="custom_llama", architectures=["CustomForCausalLM"],
               auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                         "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    # transformers imports a copy from its modules cache, so the marker path is absolute.
    (d / "modeling_custom.py").write_text(CUSTOM_CODE.replace("MARKER", repr(str(d / "CODE_RAN"))))
    return d


def test_checkpoint_code_is_refused_unless_params_allow_it(remote_code_dir):
    for load in (load_causal_lm, load_reward_model):
        with pytest.raises(ConfigError) as err:
            load(remote_code_dir, ModelConfig())
        assert "trust_remote_code" in str(err.value) and str(remote_code_dir) in str(err.value)
    assert not (remote_code_dir / "CODE_RAN").exists()
    # The switch is the params field: with it on, the same directory loads through its own class.
    model = load_causal_lm(remote_code_dir, ModelConfig(trust_remote_code=True))
    assert type(model).__name__ == "CustomForCausalLM" and (remote_code_dir / "CODE_RAN").exists()
    (remote_code_dir / "CODE_RAN").unlink()


def test_stage_refuses_checkpoint_code_with_a_clear_error(remote_code_dir, tmp_path, monkeypatch, capsys):
    from alignloop.pipeline.stages import base

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(remote_code_dir)}}))
    assert base.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "trust_remote_code: true" in err and "Traceback" not in err
    assert not (remote_code_dir / "CODE_RAN").exists() and not (tmp_path / "data/models/base").exists()


def test_redact_is_a_pure_replacement():
    from alignloop.pipeline.tracking import redact, secret_values

    env = {"HF_TOKEN": "hf_abcdefgh", "AWS_SECRET_ACCESS_KEY": "s3cr3tvalue", "HOME": "/home/me", "GH_TOKEN": "x"}
    secrets = secret_values(env)
    assert sorted(secrets) == ["hf_abcdefgh", "s3cr3tvalue"]  # HOME is not secret; 1-char values would redact all
    assert redact({"a": "https://u:s3cr3tvalue@host/x", "b": "plain"}, secrets) == {"a": "***", "b": "plain"}


def test_no_secret_environment_value_reaches_mlflow(tmp_path, monkeypatch):
    from alignloop.pipeline.stages import prepare
    from alignloop.pipeline.tracking import stage_run

    secrets = {"HF_TOKEN": "hf_SECRETxTOKENx123", "AWS_SECRET_ACCESS_KEY": "awsSECRETxKEYx456",
               "MLFLOW_TRACKING_PASSWORD": "mlflowSECRETxPWx789", "WANDB_API_KEY": "wandbSECRETxKEYx000"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("ALIGNLOOP_ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"experiment": "safety", "task": {"num_prompts": 20}}))
    assert prepare.main([]) == 0  # a real stage run, logging its params, tags and metrics
    # A secret pasted into a param value (a token in a dataset URL) is logged as *** instead.
    with stage_run("safety", "manual", {"data": {"path": f"https://user:{secrets['HF_TOKEN']}@example.org/d"}}) as run:
        run.log_metrics({"x": 1.0})

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("safety").experiment_id])
    assert {r.data.tags["stage"] for r in runs} == {"prepare", "manual"}
    assert [r.data.params["data.path"] for r in runs if r.data.tags["stage"] == "manual"] == ["***"]
    stored = (tmp_path / "mlflow.db").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file())
    for value in secrets.values():
        assert value.encode() not in stored
