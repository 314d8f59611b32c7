"Generation: per-level sampling, kill-and-resume, torn lines, shards, the audit on planted failures, bad input."
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from marco_lib import generate as mg
from marco_lib.corpora import collect_questions, read_questions, sample_paths
from marco_lib.io import write_jsonl
from marco_lib.levels import generation_params, get_level


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory):
    qs, _ = collect_questions(**sample_paths())
    return write_jsonl([q.to_dict() for q in qs], tmp_path_factory.mktemp("q") / "questions.jsonl")


def _records(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(l) for l in lines]  # every line must be a whole JSON record


def test_each_level_samples_with_its_own_parameters(tiny_models, questions_file, tmp_path):
    qs = read_questions(questions_file)
    pick = [next(q for q in qs if q.level == lvl and mg.needs_answer(q)) for lvl in ("A1", "C2")]
    mg.generate_answers(pick, tiny_models["qwen"], tmp_path / "a.jsonl", progress=False)
    got = {r["level"]: r for r in _records(tmp_path / "a.jsonl")}
    assert {k: (v["sampling"]["max_new_tokens"], v["sampling"]["temperature"]) for k, v in got.items()} == {
        "A1": (150, 0.6), "C2": (300, 0.8)}
    for r in got.values():
        assert r["new_tokens"] <= r["sampling"]["max_new_tokens"] and r["finish_reason"] in ("stop", "length")
        if r["finish_reason"] == "length": assert r["new_tokens"] == r["sampling"]["max_new_tokens"]  # ran to its own level's cap
        assert r["prompt_version"].startswith("marco-levels-v1/") and r["model"] == str(tiny_models["qwen"])
        assert r["sampling"] == {**generation_params(r["level"]), "seed": 0}


def test_cima_questions_with_tutor_answers_are_not_regenerated(tiny_models, questions_file, tmp_path):
    "CIMA questions (three tutor answers each) come first in this file: none of them is answered, the others are."
    qs = read_questions(questions_file)
    cima, others = [q for q in qs if q.authentic_answers][:3], [q for q in qs if not q.authentic_answers][:2]
    assert len(cima) == 3 and all(q.source == "cima" for q in cima)  # the sample data still has them
    small = write_jsonl([q.to_dict() for q in cima + others], tmp_path / "q.jsonl")
    s = mg.generate_answers(small, tiny_models["qwen"], tmp_path / "a.jsonl", progress=False)
    assert (s["questions"], s["selected"], s["generated"]) == (5, 2, 2)
    assert sorted(r["question_id"] for r in _records(tmp_path / "a.jsonl")) == sorted(q.id for q in others)


def test_killed_run_resumes_without_duplicates_or_gaps(tiny_models, questions_file, tmp_path, marco):
    out = tmp_path / "answers.jsonl"
    questions_file = write_jsonl([q.to_dict() for q in read_questions(questions_file)[:30]], tmp_path / "q.jsonl")
    exe = os.path.join(os.path.dirname(sys.executable), "marco")
    cmd = [exe, "generate", "--questions", str(questions_file), "--model", str(tiny_models["qwen"]), "--out", str(out),
           "--batch-size", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # a loaded machine can take minutes for the first batches
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    partial = out.read_text(encoding="utf-8").count("\n")
    wanted = [q.id for q in read_questions(questions_file) if mg.needs_answer(q)]
    assert 6 <= partial < len(wanted), "the kill should land part-way"
    r = marco(*cmd[1:])
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    ids = [x["question_id"] for x in _records(out)]
    assert sorted(ids) == sorted(wanted)  # one answer per question: none lost, none doubled
    assert summary["already_done"] >= partial - 1 and summary["missing"] == 0
    straight = tmp_path / "straight.jsonl"  # the same run, never killed, cut into other batches
    mg.generate_answers(questions_file, tiny_models["qwen"], straight, batch_size=5, progress=False)
    assert {x["question_id"]: x["answer"] for x in _records(out)} == {x["question_id"]: x["answer"] for x in _records(straight)}


# ---------------------------------------------------------------- one random stream per question

@pytest.fixture(scope="module")
def generator(tiny_models):
    return mg.load_generator(str(tiny_models["qwen"]))


def _b1(questions_file, n=6):
    "`n` B1 questions (prompts of different lengths) and a B1 level that writes at most 24 tokens, to keep tests quick."
    qs = [q for q in read_questions(questions_file) if q.level == "B1"][:n]
    return qs, replace(get_level("B1"), max_new_tokens=24)


def test_a_question_gets_the_same_answer_alone_or_in_a_batch(generator, questions_file):
    "Each question samples from its own stream: batching, padding and its place in the batch change nothing."
    m, tok = generator
    qs, lvl = _b1(questions_file)
    for seed in (0, 1, 2):
        batch = mg.generate_batch_hf(m, tok, qs, seed, lvl)
        assert len({r["prompt_tokens"] for r in batch}) >= 4 and sum(r["new_tokens"] > 1 for r in batch) >= 4  # a real test
        alone = [mg.generate_batch_hf(m, tok, [q], seed, lvl)[0] for q in qs]
        assert alone == batch, seed


def test_a_rerun_in_other_batches_repeats_every_answer_and_another_seed_changes_them(generator, questions_file):
    m, tok = generator
    qs, lvl = _b1(questions_file)
    first = mg.generate_batch_hf(m, tok, qs, 0, lvl)
    rebatched = mg.generate_batch_hf(m, tok, qs[:4][::-1], 0, lvl)[::-1] + mg.generate_batch_hf(m, tok, qs[4:][::-1], 0, lvl)[::-1]
    assert rebatched == first  # the same seed: the same answers, whatever the batches and the order in them
    assert mg.generate_batch_hf(m, tok, qs, 0, lvl) == first  # and the same batch again, of course
    other = mg.generate_batch_hf(m, tok, qs, 1, lvl)
    assert all(a["text"] != b["text"] for a, b in zip(first, other))  # another seed: other answers, every one


def test_the_per_question_sampler_keeps_hfs_distribution_and_warns_nothing(tiny_models, questions_file):
    "Qwen2.5-Instruct ships top_k 20 and a repetition penalty: they still apply, in HF's order, and generate is not told to sample."
    import logging, warnings
    import torch
    from transformers import LogitsProcessorList
    m, tok = mg.load_generator(str(tiny_models["qwen"]))
    m.generation_config.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    params = generation_params("A1")
    gc = mg.sampling_config(m, params)
    assert (gc.temperature, gc.top_p, gc.top_k, gc.repetition_penalty) == (0.6, 0.85, 20, 1.05)
    ids = torch.randint(3, 200, (3, 9)); mask = torch.ones_like(ids); mask[0, :4] = 0  # one left-padded row
    scores = torch.randn(3, m.config.vocab_size, generator=torch.Generator().manual_seed(0)) * 4
    kw = dict(input_ids_seq_length=9, device=ids.device, model_kwargs={"attention_mask": mask})
    hf = m._get_logits_processor(gc, **kw)  # what generate(do_sample=True) applies
    rest = m._get_logits_processor(m._prepare_generation_config(None, max_new_tokens=150, do_sample=False)[0], **kw)
    torch.testing.assert_close(mg.sampling_warpers(gc)(ids, rest(ids, scores.clone())), hf(ids, scores.clone()))
    said = []
    handler = logging.Handler(logging.WARNING); handler.emit = said.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = mg.generate_batch_hf(m, tok, read_questions(questions_file)[:2], 0, replace(get_level("A1"), max_new_tokens=8))
    finally: logging.getLogger("transformers").removeHandler(handler)
    assert len(rows) == 2 and not said and not caught, ([r.getMessage() for r in said], [str(w.message) for w in caught])


def test_a_level_at_temperature_zero_decodes_greedily(generator, questions_file):
    m, tok = generator
    qs, lvl = _b1(questions_file, 3)
    lvl = replace(lvl, temperature=0.0)
    rows = mg.generate_batch_hf(m, tok, qs, 0, lvl)
    assert mg.generate_batch_hf(m, tok, qs, 7, lvl) == rows  # no randomness: the seed changes nothing
    enc = tok(mg.prompt_texts(tok, qs[:1], lvl), return_tensors="pt", add_special_tokens=False)
    ref = m.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:].tolist()
    eos = mg._eos_ids(m, tok)
    ref = ref[:next((j for j, t in enumerate(ref) if t in eos), len(ref))]
    assert rows[0]["text"] == tok.decode(ref, skip_special_tokens=True).strip()


# ---------------------------------------------------------------- continuous batching

@pytest.fixture
def stopping_generator(tiny_models):
    "The tiny generator with a quarter of its tokens ending an answer and Qwen-Instruct's repetition penalty: answers of many lengths."
    m, tok = mg.load_generator(str(tiny_models["qwen"]))
    m.generation_config.update(eos_token_id=list(range(0, m.config.vocab_size, 4)), repetition_penalty=1.05)
    return m, tok


def _mixed(questions_file, per_level=3):
    qs = read_questions(questions_file)
    return [q for l in ("A1", "B1", "C2") for q in [x for x in qs if x.level == l and mg.needs_answer(x)][:per_level]]


SHORT = {"A1": {"max_new_tokens": 10}, "B1": {"max_new_tokens": 16}, "C2": {"max_new_tokens": 12, "temperature": 0.0}}  # C2 greedy
SHORT_LEVELS = {c: replace(get_level(c), **v) for c, v in SHORT.items()}


def test_finished_rows_leave_the_batch_and_waiting_questions_take_their_places(stopping_generator, questions_file, tmp_path):
    "The run decodes only rows that still write: one decoded row per answer token but the last, never more rows than the batch."
    m, tok = stopping_generator
    qs, calls = _mixed(questions_file), []
    hook = m.register_forward_hook(lambda mod, args, kw, out: calls.append(tuple((args[0] if args else kw["input_ids"]).shape)),
                                   with_kwargs=True)
    try: s = mg.generate_answers(qs, (m, tok), tmp_path / "a.jsonl", batch_size=4, level_settings=SHORT, progress=False)
    finally: hook.remove()
    recs = _records(tmp_path / "a.jsonl")
    assert len(recs) == len(qs) and len({r["new_tokens"] for r in recs}) >= 4  # a real test: answers of many lengths
    assert sum(rows for rows, width in calls if width == 1) == sum(r["new_tokens"] - 1 for r in recs)
    assert s["batching"] == "continuous"
    assert sum(rows for rows, width in calls if width > 1) == len(qs)  # each prompt runs through the model once
    assert max(rows for rows, _ in calls) <= 4


def test_streamed_answers_are_the_answers_each_question_gets_alone(stopping_generator, questions_file):
    "Levels mixed, rows leaving and joining, any batch size or refill: each answer is what `generate` gives the question alone."
    import warnings
    m, tok = stopping_generator
    qs = _mixed(questions_file)
    for seed in (0, 3):
        alone = {q.id: mg.generate_batch_hf(m, tok, [q], seed, SHORT_LEVELS[q.level])[0] for q in qs}
        for bs, refill in ((1, None), (4, 1), (5, 3)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = {q.id: a for q, a in mg.generate_stream_hf(m, tok, qs, {q.id: seed for q in qs}, SHORT_LEVELS, bs, refill)}
            assert got == alone and not caught, (seed, bs, [str(w.message) for w in caught])
    assert {a["finish_reason"] for a in alone.values()} == {"stop", "length"}


def test_a_generation_config_the_stream_cannot_follow_gets_static_batches(stopping_generator, questions_file, tmp_path):
    "A setting the stream does not apply (here a minimum length) is not dropped silently: the run uses `generate`, and says so."
    m, tok = stopping_generator
    m.generation_config.min_new_tokens = 5
    qs = _mixed(questions_file, 2)
    with pytest.raises(ValueError, match="MinNewTokensLengthLogitsProcessor"): next(mg.generate_stream_hf(m, tok, qs))
    s = mg.generate_answers(qs, (m, tok), tmp_path / "a.jsonl", batch_size=4, level_settings=SHORT, progress=False)
    assert s["batching"] == "static (the generation config asks for MinNewTokensLengthLogitsProcessor)"
    assert min(r["new_tokens"] for r in _records(tmp_path / "a.jsonl")) >= 5


def test_a_torn_last_line_is_cut_and_the_question_answered_again(tiny_models, questions_file, tmp_path):
    out = tmp_path / "a.jsonl"
    mg.generate_answers(questions_file, tiny_models["qwen"], out, limit=4, progress=False)
    lines = out.read_text(encoding="utf-8").splitlines(True)
    first = {r["question_id"]: r["answer"] for r in map(json.loads, lines)}
    out.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2], encoding="utf-8")  # a write cut short
    s = mg.generate_answers(questions_file, tiny_models["qwen"], out, limit=4, progress=False)
    assert (s["torn_line_repaired"], s["generated"], s["answers"]) == (True, 1, 4)
    assert {r["question_id"]: r["answer"] for r in _records(out)} == first  # answered again, alone this time: the same answer


def test_a_corrupt_middle_line_stops_with_its_line_number(tiny_models, questions_file, tmp_path, marco):
    out = tmp_path / "a.jsonl"
    out.write_text('{"question_id": "x", "level": "A1", "answer": "ok"}\n{broken}\n{"question_id": "y", "level": "A1", "answer": "ok"}\n')
    r = marco("generate", "--questions", questions_file, "--model", tiny_models["qwen"], "--out", out, "--quiet")
    assert r.returncode == 2 and "line 2" in r.stderr and r.stderr.count("\n") == 1


def test_regenerate_flagged_keeps_the_old_answers_aside(tiny_models, questions_file, tmp_path):
    out = tmp_path / "a.jsonl"
    mg.generate_answers(questions_file, tiny_models["qwen"], out, limit=6, progress=False)
    before = _records(out)
    flagged = set(mg.audit(before)["flagged_ids"])
    assert flagged  # random weights write gibberish
    s = mg.generate_answers(questions_file, tiny_models["qwen"], out, limit=6, progress=False, regenerate_flagged=True)
    after = _records(out)
    rejected = _records(out.with_suffix(".rejected.jsonl"))
    assert s["generated"] == len(flagged) and len(after) == 6 and len({r["question_id"] for r in after}) == 6
    assert {r["question_id"] for r in rejected} == flagged
    assert all(r["attempt"] == 2 and r["sampling"]["seed"] == 1 for r in after if r["question_id"] in flagged)


def test_shards_split_the_work_and_merge_refuses_overlaps_and_gaps(tiny_models, questions_file, tmp_path, marco):
    qs = [q for q in read_questions(questions_file) if mg.needs_answer(q)][:10]
    small = write_jsonl([q.to_dict() for q in qs], tmp_path / "q.jsonl")
    parts = [tmp_path / f"part{k}.jsonl" for k in range(3)]
    r = marco("generate", "--questions", small, "--model", tiny_models["qwen"], "--out", parts[0], "--shard", "0/3", "--quiet")
    assert r.returncode == 0, r.stderr
    for k in (1, 2): mg.generate_answers(small, tiny_models["qwen"], parts[k], shard=f"{k}/3", progress=False)
    sizes = [len(_records(p)) for p in parts]
    assert sum(sizes) == 10 and all(sizes)
    r = marco("merge-answers", *parts, "--out", tmp_path / "all.jsonl", "--questions", small)
    assert r.returncode == 0, r.stderr
    assert sorted(x["question_id"] for x in _records(tmp_path / "all.jsonl")) == sorted(q.id for q in qs)
    r = marco("merge-answers", parts[0], parts[0], "--out", tmp_path / "bad.jsonl")
    assert r.returncode == 2 and "two shards" in r.stderr and not (tmp_path / "bad.jsonl").exists()
    r = marco("merge-answers", parts[0], parts[1], "--out", tmp_path / "gap.jsonl", "--questions", small)
    assert r.returncode == 2 and "no answer" in r.stderr and not (tmp_path / "gap.jsonl").exists()


@pytest.mark.parametrize("make,reason", [
    (lambda d: d / "missing.jsonl", "no such file"),
    (lambda d: (d / "q.jsonl").write_text('{"id": "a", "source": "x", "level": "A1", "level_method": "gold", "question": "?", "language": "en"}\n{"id": "b"\n') and d / "q.jsonl", "line 2"),
    (lambda d: (d / "q.jsonl").write_text('{"id": "a", "source": "x", "level": "D4", "level_method": "gold", "question": "?", "language": "en"}\n') and d / "q.jsonl", "line 1: not a question record (unknown CEFR level 'D4'"),
])
def test_bad_questions_files_name_the_problem_and_write_nothing(marco, tiny_models, tmp_path, make, reason):
    q = make(tmp_path)
    r = marco("generate", "--questions", q, "--model", tiny_models["qwen"], "--out", tmp_path / "a.jsonl", "--quiet")
    assert r.returncode == 2 and reason in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "a.jsonl").exists()


def test_bad_shard_and_missing_model_fail_cleanly(marco, questions_file, tiny_models, tmp_path):
    r = marco("generate", "--questions", questions_file, "--model", tiny_models["qwen"], "--out", tmp_path / "a.jsonl", "--shard", "3/3")
    assert r.returncode == 2 and "0 <= i < n" in r.stderr
    r = marco("generate", "--questions", questions_file, "--model", tmp_path / "no-model", "--out", tmp_path / "a.jsonl", "--quiet")
    assert r.returncode == 2 and "cannot load the model" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- the audit on planted answers

CLEAN = {
    "A1": ["In Italian you say 'Ciao!' to friends. It means hello and goodbye. With a stranger, say 'Buongiorno!'.",
           "The word 'tavolo' means table. It is masculine, so we say 'il tavolo'. Example: Il libro è sul tavolo.",
           "To say you are hungry, use 'Ho fame'. Italians say 'I have hunger'. For thirst, say 'Ho sete'."],
    "B2": ["Il congiuntivo si usa dopo verbi che esprimono opinione o dubbio, come pensare e credere. Per esempio: credo che abbia ragione. "
           "Con il verbo sapere, invece, si usa l'indicativo, perché esprime certezza.",
           "La frase è corretta, ma in una lettera formale è meglio scrivere 'Le scrivo' invece di 'ti scrivo'. "
           "Il pronome di cortesia si scrive spesso con la maiuscola."],
    "C2": ["L'espressione 'a data da destinarsi' appartiene al registro burocratico: è precisa ma fredda. In un testo letterario "
           "si preferirebbe 'più avanti' oppure 'in un secondo momento', che suonano meno amministrativi e più naturali."],
}
PLANTED = {
    "german-sentence": ("B2", "Il congiuntivo si usa dopo pensare. Das ist eine sehr wichtige Regel, die man lernen muss. Per esempio: penso che sia vero e giusto.", "stop", "language:de"),
    "german-words": ("B1", "La frase è corretta und sehr naturale, ma puoi anche dire 'mi piace molto' in questo contesto.", "stop", "foreign-words:de"),
    "empty": ("A2", "   ", "stop", "empty"),
    "truncated": ("C1", "Il passato remoto si usa soprattutto nella narrazione letteraria e nelle regioni del sud, dove però", "length", "truncated"),
    "loop": ("A1", "Very good! Very good! Very good! Very good! Very good! Very good! Very good!", "length", "repetition"),
}


def _answers(tmp_path):
    rows = []
    for lvl, texts in CLEAN.items():
        rows += [{"question_id": f"clean-{lvl}-{i}", "level": lvl, "answer": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
    for k, (lvl, text, fr, _) in PLANTED.items():
        rows.append({"question_id": k, "level": lvl, "answer": text, "finish_reason": fr})
    opening = "Great question, my friend! "
    rows += [{"question_id": f"templ-{i}", "level": "A2", "finish_reason": "stop",
              "answer": opening + f"The word number {i} in Italian is easy: say it slowly and clearly with a smile."} for i in range(6)]
    rows += [{"question_id": f"filler-{i}", "level": "A2", "finish_reason": "stop",
              "answer": f"Italian has {w} sounds. Practise them every day with short sentences, and listen to songs."}
             for i, w in enumerate(["open", "closed", "double", "soft", "hard", "long", "short", "clear", "sweet", "bright"])]
    return write_jsonl(rows, tmp_path / "answers.jsonl")


def test_audit_flags_the_planted_failures_and_passes_clean_answers(marco, tmp_path):
    r = marco("audit", _answers(tmp_path))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    flagged = rep["flagged_ids"]
    for k, (_, _, _, flag) in PLANTED.items():
        assert flag in flagged.get(k, []), (k, flagged.get(k))
    assert all(flagged.get(f"templ-{i}") == ["template"] for i in range(6)), {k: v for k, v in flagged.items() if k.startswith("templ")}
    assert not [k for k in flagged if k.startswith(("clean", "filler"))], {k: v for k, v in flagged.items() if k.startswith(("clean", "filler"))}
    assert rep["template_openings"][0]["opening"] == "great question my friend" and rep["template_openings"][0]["answers"] == 6
    assert rep["flags"]["template"] == 6 and rep["levels"]["A2"]["flagged"] == 7


def test_audit_of_a_missing_file_is_a_clear_error(marco, tmp_path):
    r = marco("audit", tmp_path / "nope.jsonl")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_english_is_allowed_at_a1_and_flagged_from_b2():
    text = "The subjunctive is used after verbs of opinion in Italian. Per esempio: penso che sia vero e che tu abbia ragione."
    assert mg.answer_flags(text, "A1") == mg.answer_flags(text, "A2") == []
    assert "language:en" in mg.answer_flags(text, "B2")


def test_generate_with_targets_answers_only_what_the_dataset_needs(tiny_models, questions_file, tmp_path, marco):
    "Per level: the target minus the authentic answers, plus the 15% margin; flagged answers regenerated a bounded number of times."
    targets = tmp_path / "targets.yaml"
    targets.write_text("B2: 4\nC2: 2\n")  # no authentic answers at these levels
    out = tmp_path / "a.jsonl"
    r = marco("generate", "--questions", questions_file, "--model", tiny_models["qwen"], "--out", out, "--targets", targets,
              "--rounds", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["to_generate"] == 5 + 3 and s["rounds"] == 1  # ceil(4 x 1.15), ceil(2 x 1.15)
    answers, rejected = _records(out), _records(out.with_suffix(".rejected.jsonl"))
    assert sorted(Counter(a["level"] for a in answers).items()) == [("B2", 5), ("C2", 3)]
    assert sorted(r["question_id"] for r in rejected) == sorted(a["question_id"] for a in answers)  # random weights: every
    assert all(r["attempt"] == 1 and r["flags"] for r in rejected)  # answer flagged once, regenerated once, and no more
    assert all(a["attempt"] == 2 and a["sampling"]["seed"] == 1 for a in answers)  # the second answer had a new seed
    assert s["short"] == {"B2": 4, "C2": 2}  # and the shortfall is reported, not hidden
    again = json.loads(marco("generate", "--questions", questions_file, "--model", tiny_models["qwen"], "--out", out,
                             "--targets", targets, "--rounds", "0", "--quiet").stdout)
    assert again["last"]["generated"] == 0 and len(_records(out)) == 8  # a rerun resumes: nothing doubled


# ---------------------------------------------------------------- one writer per answers file

def _marco_exe():
    return os.path.join(os.path.dirname(sys.executable), "marco")


def _dead_pid():
    "The pid of a process that has exited (and been reaped): nothing answers to it any more."
    p = subprocess.Popen([sys.executable, "-c", "pass"]); p.wait()
    return p.pid


def _wait_for_owner(lock, proc, seconds=120):
    "Wait until `lock` names its owner (or `proc` ends); the owner dict or None."
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try: return json.loads(lock.read_text())
        except (OSError, ValueError): time.sleep(0.02)
    return None


def test_a_second_generate_on_the_same_output_stops_at_once_naming_the_first(tiny_models, questions_file, tmp_path, marco):
    "Two runs on one --out (a Colab cell run again while the first runs): the second is refused, the file gets each answer once."
    out, lock = tmp_path / "a.jsonl", tmp_path / "a.jsonl.lock"
    cmd = [_marco_exe(), "generate", "--questions", str(questions_file), "--model", str(tiny_models["qwen"]), "--out", str(out),
           "--limit", "3", "--batch-size", "3", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        owner = _wait_for_owner(lock, first)
        assert owner is not None, "the first run never wrote a lock naming itself"
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, however fast this machine is, while the second starts
        try: second = marco(*cmd[1:])
        finally: first.send_signal(signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None: first.kill(); first.wait()
    assert owner["pid"] == first.pid and owner["host"] and owner["since"]
    assert second.returncode == 2 and second.stderr.count("\n") == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"pid {first.pid}" in second.stderr and str(lock) in second.stderr and "wait for it" in second.stderr
    assert first.returncode == 0, stderr
    wanted = [q.id for q in read_questions(questions_file) if mg.needs_answer(q)][:3]
    assert sorted(r["question_id"] for r in _records(out)) == sorted(wanted)  # each answer once: the second wrote nothing
    assert not lock.exists() and json.loads(stdout)["stale_lock"] is None


def test_a_stale_lock_left_by_a_killed_run_is_taken_over(tiny_models, questions_file, tmp_path, marco):
    out, lock = tmp_path / "a.jsonl", tmp_path / "a.jsonl.lock"
    dead = {"pid": _dead_pid(), "host": socket.gethostname(), "since": "2024-05-01T09:00:00+00:00"}
    lock.write_text(json.dumps(dead))
    r = marco("generate", "--questions", questions_file, "--model", tiny_models["qwen"], "--out", out, "--limit", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["stale_lock"] == dead and s["missing"] == 0 and len({x["question_id"] for x in _records(out)}) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]  # the lock is gone, and no takeover guard is left


@pytest.mark.parametrize("how", [["--limit", "1"], ["--targets", "B2"]])
def test_a_beating_lock_from_another_machine_is_not_taken_over(tiny_models, questions_file, tmp_path, marco, how):
    out, lock = tmp_path / "a.jsonl", tmp_path / "a.jsonl.lock"
    if how[0] == "--targets":
        (tmp_path / "t.yaml").write_text("B2: 1\n"); how = ["--targets", str(tmp_path / "t.yaml")]
    other = json.dumps({"pid": _dead_pid(), "host": "another-colab-vm", "since": "2024-05-01T09:00:00+00:00"})
    lock.write_text(other)
    r = marco("generate", "--questions", questions_file, "--model", tiny_models["qwen"], "--out", out, *how, "--quiet")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "another-colab-vm" in r.stderr and "silent 120 s" in r.stderr and f"delete {lock}" in r.stderr
    assert lock.read_text() == other and not out.exists()


def test_a_silent_lock_from_a_disconnected_machine_is_taken_over(tiny_models, questions_file, tmp_path, marco):
    "A Colab disconnect leaves a lock from a VM that no longer exists; once it has been silent long enough, Run all goes on."
    import os, time
    out, lock = tmp_path / "a.jsonl", tmp_path / "a.jsonl.lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "gone-colab-vm", "since": "2024-05-01T09:00:00+00:00"}))
    os.utime(lock, (time.time() - 600,) * 2)  # no heartbeat for ten minutes
    r = marco("generate", "--questions", questions_file, "--model", tiny_models["qwen"], "--out", out, "--limit", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stale_lock"]["host"] == "gone-colab-vm" and not lock.exists()


def test_a_held_lock_keeps_beating(tmp_path, monkeypatch):
    import time
    monkeypatch.setattr(mg, "HEARTBEAT_S", 0.05)
    out = tmp_path / "a.jsonl"
    with mg.answers_lock(out):
        os.utime(mg.lock_path(out), (time.time() - 600,) * 2)
        time.sleep(0.5)
        assert mg.silence(mg.lock_path(out)) < 1  # touched again by the heartbeat: another machine would wait


RACER = r"""
import sys, time
from pathlib import Path
from marco_lib import generate as mg
lock, go, release = map(Path, sys.argv[1:4])
print("ready", flush=True)
while not go.exists(): time.sleep(0.001)
try: me, stale = mg.acquire_lock(lock)
except mg.AnswersError as e: print("lost", e, flush=True); sys.exit(0)
print("won", stale["pid"], flush=True)
while not release.exists(): time.sleep(0.01)
mg.release_lock(lock, me)
"""


def test_only_one_of_several_runs_taking_over_the_same_stale_lock_wins(tmp_path):
    lock, go, release = tmp_path / "a.jsonl.lock", tmp_path / "go", tmp_path / "release"
    dead = _dead_pid()
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "since": "2024-05-01T09:00:00+00:00"}))
    racers = [subprocess.Popen([sys.executable, "-c", RACER, lock, go, release], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path) for _ in range(6)]  # not the repository: the library under test, not ./marco_lib
    try:
        assert all(p.stdout.readline().strip() == "ready" for p in racers), [p.stderr.read() for p in racers if p.poll() is not None]
        go.touch()
        deadline = time.time() + 60
        while time.time() < deadline and sum(p.poll() is not None for p in racers) < len(racers) - 1: time.sleep(0.02)
        release.touch()  # the winner holds the lock until every loser has given up
        results = [p.communicate(timeout=60) for p in racers]
    finally:
        for p in racers:
            if p.poll() is None: p.kill(); p.wait()
    said = [o.strip() for o, _ in results]
    assert sum(s.startswith("won") for s in said) == 1, (said, [e for _, e in results])
    assert all(s == f"won {dead}" or (s.startswith("lost") and "another marco generate is writing it" in s) for s in said), (said, [e[-300:] for _, e in results])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "release"]  # the winner released; no guard left


def test_audit_reports_duplicated_answers_and_merge_refuses_a_part_with_one(marco, tmp_path):
    answers = _answers(tmp_path)
    rows = _records(answers)
    with open(answers, "a", encoding="utf-8") as f: f.write(json.dumps(rows[4]) + "\n")  # two runs both answered it
    r = marco("audit", answers)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (rep["duplicates"], rep["duplicate_ids"]) == (1, [rows[4]["question_id"]])
    r = marco("merge-answers", answers, "--out", tmp_path / "merged.jsonl")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{answers}: 1 question(s) answered more than once in this file, e.g. {rows[4]['question_id']} (2 answers)" in r.stderr
    assert not (tmp_path / "merged.jsonl").exists()
