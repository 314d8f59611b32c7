"The tiny offline models load and behave like the real ones through the real loading code."
import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from marco_lib.levels import generation_params
from marco_lib.tiny import build_tiny_models, count_parameters, minerva_3b_config, qwen25_3b_config


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
    assert tiny.intermediate_size / tiny.hidden_size == real.intermediate_size / real.hidden_size == 3.5
    assert tiny.tie_word_embeddings is False and tiny.sliding_window is not None
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert tok.chat_template is None and tok.pad_token is None  # the project defines both later
    ids = tok("Ciao, come stai?").input_ids
    assert ids[0] == tok.bos_token_id == tiny.bos_token_id and tok.eos_token_id == tiny.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Ciao, come stai?"
    assert GenerationConfig.from_pretrained(tiny_models["minerva"]).eos_token_id == [tok.eos_token_id]


def test_tiny_qwen_is_an_instruct_model_with_chatml(tiny_models):
    model, tok = load(tiny_models["qwen"])
    real, tiny = qwen25_3b_config(), model.config
    assert type(model).__name__ == "Qwen2ForCausalLM" and tiny.tie_word_embeddings is True
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied in the loaded model
    assert tiny.num_attention_heads // tiny.num_key_value_heads == real.num_attention_heads // real.num_key_value_heads
    assert tiny.intermediate_size / tiny.hidden_size == real.intermediate_size / real.hidden_size
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    text = tok.apply_chat_template([{"role": "system", "content": "Sei Marco."}, {"role": "user", "content": "Ciao"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nCiao<|im_end|>\n<|im_start|>assistant\n")
    gen = GenerationConfig.from_pretrained(tiny_models["qwen"])
    assert gen.eos_token_id == [tok.eos_token_id, tok.pad_token_id] and gen.pad_token_id == tok.pad_token_id


DOCUMENTED_MAX_NEW_TOKENS = {"A1": 150, "C2": 300}  # the user's guide (00_levels): short answers for beginners


@pytest.mark.parametrize("level", ["A1", "C2"])
def test_generation_with_level_parameters_respects_the_token_limit(tiny_models, level):
    model, tok = load(tiny_models["qwen"])
    stops = GenerationConfig.from_pretrained(tiny_models["qwen"]).eos_token_id
    batch = tok.apply_chat_template([[{"role": "user", "content": "Che cosa significa 'allora'?"}]],
                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    with torch.no_grad():  # stop tokens suppressed: a model that never stops, so only the level's cap can end it
        out = model.generate(**batch, **generation_params(level), suppress_tokens=stops)
    new = out[0, batch["input_ids"].shape[1]:].tolist()
    assert len(new) == DOCUMENTED_MAX_NEW_TOKENS[level]
    assert not set(new) & set(stops)


def test_parameter_counts_on_the_meta_device_match_the_loaded_models(tiny_models):
    for path in tiny_models.values():
        model, _ = load(path)
        assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())
    assert round(count_parameters(minerva_3b_config()) / 1e9, 2) == 2.89  # Minerva-3B's published size
    assert round(count_parameters(qwen25_3b_config()) / 1e9, 2) == 3.09  # Qwen2.5-3B's


def test_building_again_reuses_a_complete_build(tmp_path):
    first = build_tiny_models(tmp_path)
    stamp = (first["qwen"] / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_models(tmp_path) == first
    assert (first["qwen"] / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_incomplete_build_is_rebuilt_not_loaded(tmp_path):
    paths = build_tiny_models(tmp_path)
    (paths["minerva"] / "marco_tiny.json").unlink()          # as if the build had been killed
    (paths["minerva"] / "model.safetensors").write_bytes(b"torn")
    stamp = (paths["qwen"] / "model.safetensors").stat().st_mtime_ns
    build_tiny_models(tmp_path)
    AutoModelForCausalLM.from_pretrained(paths["minerva"])   # loads: the torn file was replaced
    assert (paths["minerva"] / "marco_tiny.json").exists()
    assert (paths["qwen"] / "model.safetensors").stat().st_mtime_ns == stamp  # the complete one was kept
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
