"The tiny offline models load and behave like the real ones through the real loading code."
import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from marco_lib.levels import generation_params
from marco_lib.tiny import build_tiny_models, minerva_3b_config, qwen25_3b_config


def load(path):
    return (AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False),
            AutoTokenizer.from_pretrained(path, trust_remote_code=False))


def test_weights_are_safetensors_only(tiny_models):
    for path in tiny_models.values():
        names = {p.name for p in path.iterdir()}
        assert "model.safetensors" in names
        assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)


def test_tiny_minerva_is_a_base_model_with_minervas_proportions(tiny_models):
    model, tok = load(tiny_models["minerva"])
    real, tiny = minerva_3b_config(), model.config
    assert type(model).__name__ == "MistralForCausalLM"
    assert tiny.num_attention_heads // tiny.num_key_value_heads == real.num_attention_heads // real.num_key_value_heads
    assert tiny.tie_word_embeddings is False and tiny.sliding_window is not None
    assert tok.chat_template is None and tok.pad_token is None  # the project defines both later
    ids = tok("Ciao, come stai?").input_ids
    assert ids[0] == tok.bos_token_id == tiny.bos_token_id and tok.eos_token_id == tiny.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Ciao, come stai?"


def test_tiny_qwen_is_an_instruct_model_with_chatml(tiny_models):
    model, tok = load(tiny_models["qwen"])
    real, tiny = qwen25_3b_config(), model.config
    assert type(model).__name__ == "Qwen2ForCausalLM" and tiny.tie_word_embeddings is True
    assert tiny.num_attention_heads // tiny.num_key_value_heads == real.num_attention_heads // real.num_key_value_heads
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    text = tok.apply_chat_template([{"role": "system", "content": "Sei Marco."}, {"role": "user", "content": "Ciao"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nCiao<|im_end|>\n<|im_start|>assistant\n")
    gen = GenerationConfig.from_pretrained(tiny_models["qwen"])
    assert tok.eos_token_id in gen.eos_token_id and gen.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("level", ["A1", "C2"])
def test_generation_with_level_parameters_respects_the_token_limit(tiny_models, level):
    model, tok = load(tiny_models["qwen"])
    params = {**generation_params(level), "max_new_tokens": 12}
    batch = tok.apply_chat_template([[{"role": "user", "content": "Che cosa significa 'allora'?"}]],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    out = model.generate(**batch, **params)
    new = out.shape[1] - batch["input_ids"].shape[1]
    assert 1 <= new <= 12


def test_building_again_reuses_a_complete_build(tmp_path):
    first = build_tiny_models(tmp_path)
    stamp = (first["qwen"] / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_models(tmp_path) == first
    assert (first["qwen"] / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_incomplete_build_is_rebuilt_not_loaded(tmp_path):
    paths = build_tiny_models(tmp_path)
    (paths["minerva"] / "marco_tiny.json").unlink()          # as if the build had been killed
    (paths["minerva"] / "model.safetensors").write_bytes(b"torn")
    build_tiny_models(tmp_path)
    AutoModelForCausalLM.from_pretrained(paths["minerva"])   # loads: the torn file was replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minerva", "qwen"]


def test_the_same_seed_gives_the_same_models(tmp_path):
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()
    a, b = build_tiny_models(tmp_path / "a"), build_tiny_models(tmp_path / "b")
    assert digest(a["minerva"]) == digest(b["minerva"]) and digest(a["qwen"]) == digest(b["qwen"])
    assert (a["qwen"] / "tokenizer.json").read_text() == (b["qwen"] / "tokenizer.json").read_text()
    c = build_tiny_models(tmp_path / "c", seed=1)
    assert digest(c["minerva"]) != digest(a["minerva"])


def test_cli_builds_tiny_models(marco, tmp_path):
    out = marco("tiny-models", tmp_path / "m")
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)
    assert set(paths) == {"minerva", "qwen"}
    load(paths["minerva"])


def test_the_shared_cache_is_built_once_where_the_environment_says(tmp_path, monkeypatch):
    from marco_lib.tiny import tiny_models
    monkeypatch.setenv("MARCO_TINY_DIR", str(tmp_path / "cache"))
    paths = tiny_models()
    assert paths["minerva"] == tmp_path / "cache" / "minerva" and (paths["qwen"] / "marco_tiny.json").exists()
    stamp = (paths["minerva"] / "model.safetensors").stat().st_mtime_ns
    assert tiny_models() == paths and (paths["minerva"] / "model.safetensors").stat().st_mtime_ns == stamp
