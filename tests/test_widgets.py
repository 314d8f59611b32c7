"Widgets, driven headless through the documented interface: config_form(), level_selector() and the split explorer."
import pytest
from transformers import TrainingArguments

from marco_lib import widgets
from marco_lib.widgets import config_form
from marco_lib.config import GPU_PROFILES, SETTINGS, load_config
from marco_lib.levels import LEVELS, target_counts


def test_the_form_has_the_documented_interface():
    form = widgets.config_form(gpu="T4")
    assert form.gpu.value == "T4" and list(form.gpu.options) == list(GPU_PROFILES)
    assert set(form.fields) == set(SETTINGS) - set(widgets.FORM_HIDDEN) and form.error is None
    assert form.preset.value == "production" and form.stability.value == "standard"


@pytest.mark.parametrize("gpu,batch,evals,accum", [("T4", 1, 1, 8), ("L4", 3, 4, 3), ("A100", 2, 3, 4)])
def test_choosing_a_gpu_fills_in_the_users_batch_settings(gpu, batch, evals, accum):
    form = widgets.config_form(gpu="CPU")
    form.gpu.value = gpu
    ta = form.training_arguments()
    assert (ta["per_device_train_batch_size"], ta["per_device_eval_batch_size"], ta["gradient_accumulation_steps"]) == (batch, evals, accum)
    assert form.fields["gradient_accumulation_steps"].value == accum


def test_an_edit_survives_gpu_and_preset_changes_and_is_marked_as_yours():
    form = widgets.config_form(gpu="T4")
    form.fields["learning_rate"].value = 1e-4
    form.fields["per_device_train_batch_size"].value = 2
    form.preset.value = "high-performance"  # this preset sets batch 4: the user's 2 must stay
    form.gpu.value = "A100"
    ta = form.training_arguments()
    assert (ta["learning_rate"], ta["per_device_train_batch_size"]) == (1e-4, 2)
    assert ta["gradient_accumulation_steps"] == 2 and form.fields["gradient_accumulation_steps"].value == 2  # the preset's
    assert "yours" in form.source["per_device_train_batch_size"].value and "preset" in form.source["gradient_accumulation_steps"].value
    assert form.overrides == {"learning_rate": 1e-4, "per_device_train_batch_size": 2}


def test_invalid_values_show_an_error_instead_of_failing_later():
    form = widgets.config_form(gpu="T4")
    form.fields["save_steps"].value = 150
    assert "save_steps" in form.error and "invalid" in form.message.value
    with pytest.raises(Exception, match="save_steps"):
        form.training_arguments()
    form.fields["bf16"].value = True
    form.fields["save_steps"].value = 500
    assert "bf16" in form.error  # a T4 has no native bf16
    form.fields["bf16"].value = False
    assert form.error is None


def test_the_form_yields_arguments_the_trainer_accepts_and_can_save(tmp_path):
    form = widgets.config_form(gpu="CPU", preset="debug")
    form.fields["report_to"].value = "none"
    TrainingArguments(**{**form.training_arguments(), "output_dir": str(tmp_path / "o")})
    path = form.save(tmp_path / "run.yaml")
    assert load_config(path).train.report_to == "none"
    assert form.train_kwargs() == {"gpu": "CPU", "preset": "debug", "stability": "standard", "overrides": {"report_to": "none"}}


def test_the_level_selector_totals_match_the_selected_targets():
    sel = widgets.level_selector()
    assert sel.total() == sum(target_counts().values()) == 17913
    sel.levels["A1"].value = False
    sel.targets["B2"].value = 3000
    expected = sum(l.target for l in LEVELS if l.code not in ("A1", "B2")) + 3000
    assert sel.total() == expected and sel.totals.value.startswith(f"<b>{expected:,}</b>")
    s = sel.selection()
    assert s["levels"] == ["A2", "B1", "B2", "C1", "C2"] and s["targets"]["A1"] == 0 and s["targets"]["B2"] == 3000
    sel.settings["C2"]["max_new_tokens"].value = 280
    assert sel.selection()["level_settings"] == {"C2": {"max_new_tokens": 280}}


def _reaches_training(cfg) -> tuple:
    "Everything `train` reads from a configuration: Trainer arguments, the LoRA config, how the base model loads, the tracker."
    from marco_lib import config as mc
    m = cfg.model
    return (mc.to_training_arguments(cfg), mc.lora_kwargs(cfg), (m.base_model, m.load_in_4bit, m.attn_implementation), cfg.train.wandb_project,
            cfg.train.padding_free)


def _another(name, value):
    from marco_lib import config as mc
    from marco_lib.widgets import CHOICES
    if name in CHOICES: return next(o for o in CHOICES[name] if o != value)
    if isinstance(value, bool): return not value
    if isinstance(value, int): return value + 7 if value > 0 else 5
    if isinstance(value, float): return value / 2 if value else 0.25
    if isinstance(value, tuple): return ("q_proj",)
    return value + "-changed"


def test_every_field_the_form_shows_changes_the_run():
    from marco_lib import config as mc
    from marco_lib.widgets import FORM_HIDDEN
    form = config_form(gpu="T4", preset="production")
    base = _reaches_training(form.config())
    for name in form.fields:
        edited = mc.resolve("T4", "production", overrides={name: _another(name, mc.get_setting(form.config(), name))})
        assert _reaches_training(edited) != base, f"{name} is shown but does not change the run"
    for name in set(FORM_HIDDEN) - {"output_dir"}:  # the run folder sets output_dir
        edited = mc.resolve("T4", "production", overrides={name: _another(name, mc.get_setting(form.config(), name))})
        assert _reaches_training(edited) == base, f"{name} changes the run but is hidden"


def test_the_explorer_shows_the_chosen_split_and_level(assembled):
    import json
    ds = assembled((0.6, 0.2, 0.2))
    card = json.loads((ds / "card.json").read_text())
    ex = widgets.explorer(ds)
    ex.split.value, ex.level.value = "validation", "B1"
    want = card["levels"]["validation"].get("B1", 0)
    assert ex.counts.value.startswith(f"<b>{want}</b> conversations in validation at B1")
    assert len(ex.selected) == want and all(c["level"] == "B1" for c in ex.selected)
    if want > 1:
        ex.index.value = 1
        assert ex.selected[1]["id"] in ex.conversation.value
    assert ex.plots.value[:8] == b"\x89PNG\r\n\x1a\n"  # the histograms were drawn
