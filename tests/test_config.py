"Configuration: the user's guide values per GPU and preset, layering, validation, mapping, persistence, the CLI."
import dataclasses
import json

import pytest
from peft import LoraConfig
from transformers import TrainingArguments

from marco_lib import config as mc

TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}


def cli_json(marco, *args):
    out = marco("config", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_t4_production_is_the_users_guide(marco):
    ta = cli_json(marco, "--gpu", "T4", "--preset", "production")["training_arguments"]
    expected = dict(per_device_train_batch_size=1, per_device_eval_batch_size=1, gradient_accumulation_steps=8,
                    fp16=True, bf16=False, tf32=False, dataloader_pin_memory=False, learning_rate=2e-4,
                    warmup_steps=0.03, weight_decay=0.01, lr_scheduler_type="cosine", eval_strategy="steps",
                    eval_steps=100, save_strategy="steps", save_steps=200, save_total_limit=3,  # 500 capped to ~10 min of T4 training
                    load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                    num_train_epochs=3, dataloader_num_workers=2, logging_steps=10, report_to="wandb",
                    run_name="marco-lora-t4", activation_checkpointing=True, remove_unused_columns=True,
                    seed=42, data_seed=42, train_sampling_strategy="group_by_length")
    assert {k: ta[k] for k in expected} == expected


@pytest.mark.parametrize("gpu,train,evals,accum,pin,bf16", [
    ("L4", 3, 4, 3, True, True), ("A100", 2, 3, 4, True, True), ("H100", 4, 8, 2, True, True),
    ("CPU", 1, 1, 8, False, False)])
def test_gpu_profiles_give_their_batch_settings(marco, gpu, train, evals, accum, pin, bf16):
    ta = cli_json(marco, "--gpu", gpu)["training_arguments"]
    got = tuple(ta[k] for k in ("per_device_train_batch_size", "per_device_eval_batch_size",
                                "gradient_accumulation_steps", "dataloader_pin_memory", "bf16"))
    assert got == (train, evals, accum, pin, bf16)
    assert ta["fp16"] is False and ta["tf32"] is bf16


@pytest.mark.parametrize("preset,expected", [
    ("memory-constrained", dict(per_device_train_batch_size=1, gradient_accumulation_steps=16,
                                activation_checkpointing=True, dataloader_pin_memory=False)),
    ("high-performance", dict(per_device_train_batch_size=4, gradient_accumulation_steps=2,
                              activation_checkpointing=False, dataloader_pin_memory=True)),
    ("debug", dict(num_train_epochs=1, eval_steps=10, save_steps=50, logging_steps=5))])
def test_presets_set_what_the_guide_says(marco, preset, expected):
    ta = cli_json(marco, "--gpu", "A100", "--preset", preset)["training_arguments"]
    assert {k: ta[k] for k in expected} == expected


@pytest.mark.parametrize("stability,lr,warmup,decay", [
    ("conservative", 1e-4, 0.05, 0.01), ("aggressive", 5e-4, 0.01, 0.001), ("standard", 2e-4, 0.03, 0.01)])
def test_stability_variants(stability, lr, warmup, decay):
    t = mc.resolve("T4", "production", stability).train
    assert (t.learning_rate, t.warmup_ratio, t.weight_decay) == (lr, warmup, decay)


@pytest.mark.parametrize("gpu", list(mc.GPU_PROFILES))
@pytest.mark.parametrize("preset", list(mc.PRESETS))
def test_user_settings_are_never_replaced_by_a_profile_or_preset(gpu, preset):
    mine = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 5, "dataloader_pin_memory": False}
    cfg = mc.resolve(gpu, preset, "aggressive", mine)
    assert {k: mc.get_setting(cfg, k) for k in mine} == mine
    assert {cfg.sources[k] for k in mine} == {"user"}


def test_layers_apply_in_order_and_are_recorded():
    cfg = mc.resolve("A100", "memory-constrained", "conservative", {"eval_steps": 50})
    assert cfg.sources["per_device_eval_batch_size"] == "gpu:A100"              # the preset does not touch it
    assert cfg.sources["gradient_accumulation_steps"] == "preset:memory-constrained"
    assert cfg.sources["learning_rate"] == "stability:conservative"
    assert cfg.sources["eval_steps"] == "user"
    assert cfg.sources["lora_r"] == "default"
    assert cfg.sources["run_name"] == "derived" and cfg.train.run_name == "marco-lora-a100"


def test_auto_detection_on_this_machine_uses_the_cpu_profile(marco):
    data = cli_json(marco, "--gpu", "auto")
    assert data["gpu"] == "CPU" and data["capability"] is None
    assert data["training_arguments"]["use_cpu"] is True and data["train"]["run_name"] == "marco-lora-cpu"


def test_an_unknown_gpu_falls_back_to_t4_and_says_so():
    cfg = mc.resolve(device=mc.Device("NVIDIA RTX A6000", 47.5, (8, 6)))
    assert cfg.gpu == "T4" and cfg.train.per_device_train_batch_size == 1
    assert "RTX A6000" in cfg.notes[0] and "most conservative" in cfg.notes[0]
    assert cfg.train.run_name == "marco-lora-rtx-a6000"


# every validation rule: (gpu, overrides) -> the setting blamed, and whether it is refused
RULES = [
    ("T4", dict(save_steps=150), "save_steps", "error"),
    ("T4", dict(save_strategy="epoch"), "save_strategy", "error"),
    ("T4", dict(eval_strategy="no"), "load_best_model_at_end", "error"),
    ("A100", dict(fp16=True), "bf16", "error"),
    ("T4", dict(fp16=False, bf16=True), "bf16", "error"),
    ("T4", dict(tf32=True), "tf32", "error"),
    ("CPU", dict(tf32=True), "tf32", "error"),
    ("CPU", dict(fp16=True), "fp16", "error"),
    ("CPU", dict(load_in_4bit=True), "load_in_4bit", "error"),
    ("T4", dict(per_device_train_batch_size=0, gradient_accumulation_steps=8), "per_device_train_batch_size", "error"),
    ("T4", dict(per_device_eval_batch_size=0), "per_device_eval_batch_size", "error"),
    ("T4", dict(gradient_accumulation_steps=0), "gradient_accumulation_steps", "error"),
    ("T4", dict(learning_rate=0.0), "learning_rate", "error"),
    ("T4", dict(num_train_epochs=0), "num_train_epochs", "error"),
    ("T4", dict(warmup_ratio=1.5), "warmup_ratio", "error"),
    ("T4", dict(weight_decay=-0.1), "weight_decay", "error"),
    ("T4", dict(lora_dropout=1.0), "lora_dropout", "error"),
    ("T4", dict(lora_r=0), "lora_r", "error"),
    ("T4", dict(lora_target_modules=""), "lora_target_modules", "error"),
    ("T4", dict(val_fraction=0.5, test_fraction=0.5), "val_fraction", "error"),
    ("T4", dict(val_fraction=0.0), "val_fraction", "error"),
    ("T4", dict(lr_scheduler_type="step"), "lr_scheduler_type", "error"),
    ("T4", dict(report_to="mlflow"), "report_to", "error"),
    ("T4", dict(attn_implementation="flash"), "attn_implementation", "error"),
    ("T4", dict(base_model="Qwen/Qwen2.5-3B-Instruct"), "base_model", "error"),
    ("T4", dict(dataloader_num_workers=-1), "dataloader_num_workers", "error"),
    ("T4", dict(gradient_accumulation_steps=4), "gradient_accumulation_steps", "warning"),
    ("T4", dict(gradient_accumulation_steps=20), "gradient_accumulation_steps", "warning"),
    ("T4", dict(greater_is_better=True), "greater_is_better", "warning"),
    ("T4", dict(padding_free=True), "padding_free", "warning"),  # a batch of 1 has no padding to remove
]


@pytest.mark.parametrize("gpu,overrides,setting,severity", RULES)
def test_each_validation_rule_names_its_setting(gpu, overrides, setting, severity):
    found = [(p.setting, p.severity) for p in mc.validate(mc.resolve(gpu, overrides=overrides))]
    assert found == [(setting, severity)]
    if severity == "error":
        with pytest.raises(mc.ConfigError, match=setting):
            mc.check(mc.resolve(gpu, overrides=overrides))


def test_every_profile_preset_and_stability_is_valid():
    tight = set()
    for gpu in mc.GPU_PROFILES:
        for preset in mc.PRESETS:
            for stability in mc.STABILITY:
                found = mc.validate(mc.resolve(gpu, preset, stability))
                assert all(p.severity == "warning" and "estimated peak memory" in p.message for p in found), (gpu, preset, stability)
                if found: tight.add((gpu, preset))
    assert tight == {("T4", "high-performance")}  # the memory estimate warns where the batch cannot fit


def test_the_memory_estimate_warns_before_a_t4_runs_out(marco):
    out = marco("config", "--gpu", "T4", "--preset", "high-performance", "--json")
    assert out.returncode == 0 and any("estimated peak memory" in w and "15 GB" in w for w in json.loads(out.stdout)["warnings"])
    fits = mc.estimate_memory(mc.resolve("T4", "high-performance", overrides={"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8,
                                                                             "gradient_checkpointing": True}))
    assert fits["total"] < 0.9 * 15


@pytest.mark.parametrize("args,needle", [
    (["--gpu", "T4", "--set", "save_steps=150"], "save_steps=150 is not a multiple of eval_steps=100"),
    (["--gpu", "T4", "--set", "bf16=true"], "bf16 is not supported natively on T4"),
    (["--gpu", "T4", "--set", "save_steps=many"], "save_steps must be an integer"),
    (["--gpu", "T4", "--set", "batch_size=2"], "unknown setting 'batch_size'"),
    (["--gpu", "T4", "--set", "fp16"], "expected key=value"),
    (["--gpu", "V100"], "unknown GPU 'V100'"),
    (["--preset", "turbo"], "unknown preset 'turbo'"),
])
def test_cli_refuses_invalid_settings_with_exit_2_and_one_paragraph(marco, args, needle):
    out = marco("config", *args)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == "" and out.stderr.count("\n") == 1


@pytest.mark.parametrize("gpu", list(mc.GPU_PROFILES))
def test_training_arguments_use_only_real_field_names(gpu):
    for preset in mc.PRESETS:
        assert set(mc.to_training_arguments(mc.resolve(gpu, preset))) <= TRAINING_FIELDS


@pytest.mark.parametrize("gpu", ["CPU", "T4"])
@pytest.mark.parametrize("preset", list(mc.PRESETS))
def test_training_arguments_construct(tmp_path, gpu, preset):
    # TrainingArguments refuses tf32 without an Ampere GPU, so only the non-Ampere profiles can be built here
    cfg = mc.resolve(gpu, preset, overrides={"output_dir": str(tmp_path), "report_to": "none"})
    args = TrainingArguments(**mc.to_training_arguments(cfg))
    assert args.warmup_steps == cfg.train.warmup_ratio and args.report_to == []
    assert args.per_device_train_batch_size == cfg.train.per_device_train_batch_size
    assert args.gradient_accumulation_steps == cfg.train.gradient_accumulation_steps


# The TrainingArguments keywords of every GPU profile (production, standard), as mapped before they were derived
# from the dataclass fields: the T4's, and what each other profile changes.
T4_ARGUMENTS = dict(
    run_name="marco-lora-t4", report_to="wandb", num_train_epochs=3.0, max_steps=-1, per_device_train_batch_size=1,
    per_device_eval_batch_size=1, gradient_accumulation_steps=8, learning_rate=2e-4, weight_decay=0.01, warmup_steps=0.03,
    lr_scheduler_type="cosine", activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False},
    fp16=True, bf16=False, tf32=False, use_cpu=False, dataloader_pin_memory=False, dataloader_num_workers=2,
    remove_unused_columns=True, train_sampling_strategy="group_by_length", logging_steps=10, eval_strategy="steps",
    eval_steps=100, save_strategy="steps", save_steps=200, save_total_limit=3, load_best_model_at_end=True,
    metric_for_best_model="eval_loss", greater_is_better=False, seed=42, data_seed=42)
AMPERE = dict(fp16=False, bf16=True, tf32=True, dataloader_pin_memory=True)
PROFILE_ARGUMENTS = {
    "T4": {},
    "L4": AMPERE | dict(run_name="marco-lora-l4", per_device_train_batch_size=3, per_device_eval_batch_size=4,
                        gradient_accumulation_steps=3, save_steps=400),
    "A100": AMPERE | dict(run_name="marco-lora-a100", per_device_train_batch_size=2, per_device_eval_batch_size=3,
                          gradient_accumulation_steps=4, save_steps=500),
    "H100": AMPERE | dict(run_name="marco-lora-h100", per_device_train_batch_size=4, per_device_eval_batch_size=8,
                          gradient_accumulation_steps=2, save_steps=500),
    "CPU": dict(run_name="marco-lora-cpu", fp16=False, use_cpu=True, dataloader_num_workers=0, save_steps=500),
}


@pytest.mark.parametrize("gpu", list(mc.GPU_PROFILES))
def test_training_arguments_of_every_profile_are_exactly_the_expected_ones(gpu, monkeypatch, tmp_path):
    import transformers.training_args as ta
    # build the GPU profiles here too: pretend an Ampere GPU is present (only the hardware checks differ)
    monkeypatch.setattr(ta, "is_torch_tf32_available", lambda: True)
    monkeypatch.setattr(ta, "is_torch_bf16_gpu_available", lambda: True)
    monkeypatch.setattr(ta, "enable_tf32", lambda on: None)
    expected = T4_ARGUMENTS | PROFILE_ARGUMENTS[gpu]
    got = mc.to_training_arguments(mc.resolve(gpu))
    assert got.pop("output_dir") == "outputs/marco-lora" and got == expected
    built = TrainingArguments(**got, output_dir=str(tmp_path)).to_dict()  # what the Trainer will see
    assert {k: built[k] for k in expected} == expected | {"report_to": [expected["report_to"]]}  # a list once built


def test_a_disabled_tracker_is_passed_explicitly():
    # report_to=None once started wandb and blocked on a login prompt
    assert mc.to_training_arguments(mc.resolve("T4", overrides={"report_to": "none"}))["report_to"] == "none"


def test_lora_settings_adapt_every_linear_layer_of_minerva(tiny_models):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_models["minerva"])
    linear = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    assert linear == set(mc.LORA_TARGETS)  # the seven modules are exactly "all-linear"
    peft_model = get_peft_model(model, LoraConfig(**mc.lora_kwargs(mc.resolve("T4"))))
    trainable, total = peft_model.get_nb_trainable_parameters()
    cfg = model.config
    per_layer = 16 * sum(i + o for i, o in [
        (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim), (cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim),
        (cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim), (cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size),
        (cfg.hidden_size, cfg.intermediate_size), (cfg.hidden_size, cfg.intermediate_size),
        (cfg.intermediate_size, cfg.hidden_size)])
    assert trainable == per_layer * cfg.num_hidden_layers


def test_minerva_3b_lora_has_26_million_trainable_parameters():
    "The project's counts (LoRA and base weights, behind the memory estimate) are peft's own, on the real Minerva-3B."
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from marco_lib.tiny import minerva_3b_config
    with torch.device("meta"):  # shapes only: no memory for the 2.9 billion weights
        model = AutoModelForCausalLM.from_config(minerva_3b_config())
        peft_model = get_peft_model(model, LoraConfig(**mc.lora_kwargs(mc.resolve("T4"))))
    trainable, total = peft_model.get_nb_trainable_parameters()
    shape = mc.model_shape(mc.ModelSettings().base_model)
    assert trainable == mc.count_lora(shape, mc.LoraSettings().lora_r, mc.LORA_TARGETS)
    assert total - trainable == sum(mc.count_weights(shape).values())
    assert round(trainable / 1e6, 1) == 26.2  # the figure the config notebook quotes
    assert mc.estimate_memory(mc.resolve("T4"))["adapter_and_optimizer"] == round(16 * trainable / 2**30, 2)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip_exactly(tmp_path, suffix):
    cfg = mc.resolve("L4", "high-performance", "conservative",
                     {"lora_target_modules": "q_proj,v_proj", "output_dir": "/content/drive/MyDrive/marco"})
    assert mc.load_config(mc.save_config(cfg, tmp_path / f"c{suffix}")) == cfg


def test_cli_saves_what_it_prints_and_no_secret(marco, tmp_path):
    secrets = {"HF_TOKEN": "hf_secretsecretsecret", "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567"}
    out = marco("config", "--gpu", "A100", "--preset", "debug", "--set", "lora_r=8", "--save", tmp_path / "run.yaml",
                "--json", env=secrets)
    assert out.returncode == 0, out.stderr
    saved = mc.load_config(tmp_path / "run.yaml")
    assert mc.config_dict(saved) == {k: v for k, v in json.loads(out.stdout).items()
                                     if k not in ("warnings", "training_arguments")}
    text = (tmp_path / "run.yaml").read_text() + out.stdout + out.stderr
    assert not any(s in text for s in secrets.values())


def test_loading_a_bad_file_names_the_file_and_setting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpu: T4\ntrain:\n  save_steps: often\n")
    with pytest.raises(mc.ConfigError, match=r"bad\.yaml: save_steps must be an integer"):
        mc.load_config(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(mc.ConfigError, match=r"bad\.yaml: cannot read"):
        mc.load_config(bad)


def test_explain_covers_every_setting_with_its_default():
    for name in mc.SETTINGS:
        text = mc.explain(name)
        assert text.startswith(f"{name} (default ") and "\nWhy: " in text and "\nTrade-off: " in text


def test_every_accepted_scheduler_is_one_the_installed_transformers_knows():
    from transformers import SchedulerType
    assert set(mc.SCHEDULERS) <= {s.value for s in SchedulerType}


def test_padding_free_is_off_by_default_and_set_like_any_setting(marco):
    assert cli_json(marco, "--gpu", "A100")["train"]["padding_free"] is False
    on = cli_json(marco, "--gpu", "A100", "--set", "padding_free=true")
    assert on["train"]["padding_free"] is True and on["warnings"] == []  # the A100's batch of 2: something to remove
    assert "padding_free" not in on["training_arguments"]  # a collator choice, not a TrainingArguments field
    assert any("nothing to remove at per-device batch 1" in w for w in cli_json(marco, "--gpu", "T4", "--set", "padding_free=true")["warnings"])


def test_padding_free_is_refused_with_an_attention_not_known_to_keep_rows_apart(monkeypatch):
    "Were marco to accept another attention implementation, padding-free batches would stay refused until it is checked."
    monkeypatch.setattr(mc, "ATTENTION", mc.ATTENTION + ("flex_attention",))
    assert set(mc.PACKED_ATTENTION) == {"sdpa", "eager", "flash_attention_2"}
    cfg = mc.resolve("A100", overrides={"padding_free": True, "attn_implementation": "flex_attention"})
    assert [(p.setting, p.severity) for p in mc.validate(cfg)] == [("padding_free", "error")]
    with pytest.raises(mc.ConfigError, match=r"attn_implementation='flex_attention' is not known to keep them apart.*"
                                             r"Use attn_implementation=flash_attention_2 or sdpa or eager, or padding_free=false"):
        mc.check(cfg)
    assert mc.validate(mc.resolve("A100", overrides={"attn_implementation": "flex_attention"})) == []  # refused only with padding_free

