"Assembly: answer-only labels with EOS, leak-free stratified splits, reproducibility, the card, balance, the CLI."
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from marco_lib import dataset as md
from marco_lib.corpora import Question, collect_questions, read_questions, sample_paths
from marco_lib.text import normalise
from marco_lib.io import write_jsonl
from marco_lib.levels import LEVEL_CODES, target_counts
from marco_lib.tiny import fixture_answers

def clean_answers(questions, model="Qwen/Qwen2.5-3B-Instruct"):
    "Answers that pass the audit: the right language for the level, varied openings, a sensible length."
    return fixture_answers(questions, model)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample")
    qs, _ = collect_questions(**sample_paths())
    write_jsonl([q.to_dict() for q in qs], d / "questions.jsonl")
    write_jsonl(clean_answers(qs), d / "answers.jsonl")
    return d


@pytest.fixture(scope="module")
def built(sample, tiny_models):
    info = md.assemble(sample / "questions.jsonl", [sample / "answers.jsonl"], sample / "ds", tokenizer=tiny_models["minerva"],
                       targets="all", fractions=(0.6, 0.2, 0.2), seed=7)
    return sample / "ds", info


def rows_of(ds, split):
    return [json.loads(l) for l in (ds / "conversations" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_labels_are_exactly_the_answer_and_eos(built):
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    ds, info = built
    tok = AutoTokenizer.from_pretrained(ds / "tokenizer")
    assert tok.chat_template == md.MINERVA_CHAT_TEMPLATE
    tk = load_from_disk(str(ds / "tokenized"))
    convs = {c["id"]: c for s in md.SPLITS for c in rows_of(ds, s)}
    n = 0
    for s in md.SPLITS:
        for r in tk[s]:
            labelled = [t for t in r["labels"] if t != -100]
            assert tok.decode(labelled) == convs[r["id"]]["messages"][2]["content"] + tok.eos_token
            first = next(i for i, t in enumerate(r["labels"]) if t != -100)
            assert all(t == -100 for t in r["labels"][:first]) and r["labels"][first:] == r["input_ids"][first:]
            prompt = tok.apply_chat_template(convs[r["id"]]["messages"][:2], add_generation_prompt=True, tokenize=False)
            assert tok.decode(r["input_ids"][:first]) == prompt  # what inference feeds the model is the training prefix
            n += 1
    assert n == info["conversations"] > 50 and info["generated"] > 0


def test_card_figures_agree_with_the_saved_rows(built):
    ds, info = built
    card = json.loads((ds / "card.json").read_text())
    rows = {s: rows_of(ds, s) for s in md.SPLITS}
    assert card["splits"] == {s: len(r) for s, r in rows.items()}
    assert card["conversations"] == sum(card["splits"].values())
    every = [c for r in rows.values() for c in r]
    assert (card["authentic"], card["generated"]) == (sum(c["kind"] == "authentic" for c in every), sum(c["kind"] == "generated" for c in every))
    for s in md.SPLITS:
        assert card["levels"][s] == dict(Counter(c["level"] for c in rows[s]))
        assert card["sources"][s] == dict(Counter(c["source"] for c in rows[s]))
    assert card["generators"] == {"Qwen/Qwen2.5-3B-Instruct": card["generated"]}
    assert card["join"]["generated_flagged"] == 0 and card["join"]["orphan_answers"] == 0
    readme = (ds / "README.md").read_text()
    assert f"{card['conversations']:,} conversations" in readme and "Qwen/Qwen2.5-3B-Instruct" in readme


def test_card_names_every_sources_licence_and_the_generators(built):
    ds, info = built
    card = json.loads((ds / "card.json").read_text())
    readme = (ds / "README.md").read_text()
    assert set(card["licences"]) == set(card["source_totals"]) == {"cima", "tatoeba", "merlin", "celi"}
    for src, lic in card["licences"].items():
        assert (lic["name"], lic["conversations"]) == (md.LICENCES[src]["name"], card["source_totals"][src])
        assert lic["name"] in readme and lic["attribution"] in readme
    qwen = card["generator_licences"]["Qwen/Qwen2.5-3B-Instruct"]
    assert qwen["name"] == "Qwen Research License" and qwen["conversations"] == card["generated"]
    assert "## Licences and attribution" in readme and card["share_under"] in readme and qwen["url"] in readme
    tatoeba = {c["question_id"] for s in md.SPLITS for c in rows_of(ds, s) if c["source"] == "tatoeba"}
    assert set(card["sentence_attributions"]) == tatoeba and all("tatoeba.org #" in a for a in card["sentence_attributions"].values())


def with_sources(qs, a, b):
    "The synthetic questions with their two sources renamed."
    return [replace(q, source=a if q.source == "tatoeba" else b) for q in qs]


def test_a_dataset_with_merlin_is_shared_under_cc_by_sa_only(tmp_path):
    info = _assemble(tmp_path, synthetic(), "ds")  # tatoeba and merlin
    assert info["share_under"].startswith("May be shared under CC BY-SA 4.0") and "Qwen Research License" in info["share_under"]
    assert info["share_under"] in (tmp_path / "ds" / "README.md").read_text()
    free = _assemble(tmp_path, with_sources(synthetic(), "tatoeba", "cima"), "free")
    assert "CC BY 2.5" in free["share_under"] and "BY-SA" not in free["share_under"]


def test_a_dataset_with_celi_may_not_be_redistributed(tmp_path):
    info = _assemble(tmp_path, with_sources(synthetic(), "merlin", "celi"), "ds")
    assert info["share_under"].startswith("Not redistributable") and not info["licences"]["celi"]["redistributable"]
    assert "must not be shared publicly" in (tmp_path / "ds" / "README.md").read_text()


def synthetic(n=400, shared=0):
    "Questions over all levels and two sources; the last `shared` repeat earlier texts of the same level (from the other source)."
    qs = []
    for i in range(n):
        level = LEVEL_CODES[i % 6]
        text = f"Domanda numero {i if i < n - shared else i - 6 * (n // 12)} sul congiuntivo"
        qs.append(Question(f"q{i}", "tatoeba" if i % 4 else "merlin", level, "gold", text, "it" if level[0] != "A" else "en"))
    return qs


def _assemble(tmp_path, qs, name, seed=11, fractions=(0.8, 0.1, 0.1)):
    write_jsonl([q.to_dict() for q in qs], tmp_path / "q.jsonl")
    write_jsonl(clean_answers(qs), tmp_path / "a.jsonl")
    return md.assemble(tmp_path / "q.jsonl", [tmp_path / "a.jsonl"], tmp_path / name, targets="all", fractions=fractions, seed=seed)


def test_the_same_question_never_lands_in_two_splits(tmp_path):
    qs = synthetic(shared=60)
    _assemble(tmp_path, qs, "ds")
    byq, where = {q.id: q for q in qs}, {}
    for s in md.SPLITS:
        for conv in rows_of(tmp_path / "ds", s):
            key = normalise(byq[conv["question_id"]].question)
            assert where.setdefault(key, s) == s, f"{key!r} is in {where[key]} and {s}"
    assert len(where) == 400 - 60


def test_splits_are_stratified_within_one_row_and_reproducible(tmp_path):
    qs = synthetic()
    a = _assemble(tmp_path, qs, "a")
    b = _assemble(tmp_path, qs, "b")
    c = _assemble(tmp_path, qs, "c", seed=12)
    for s in md.SPLITS:
        assert (tmp_path / "a" / "conversations" / f"{s}.jsonl").read_bytes() == (tmp_path / "b" / "conversations" / f"{s}.jsonl").read_bytes()
    assert rows_of(tmp_path / "a", "test") != rows_of(tmp_path / "c", "test")
    for level in LEVEL_CODES:
        total = sum(a["levels"][s].get(level, 0) for s in md.SPLITS)
        for s, f in zip(md.SPLITS, (0.8, 0.1, 0.1)):
            assert abs(a["levels"][s].get(level, 0) - f * total) <= 1 + 1e-9, (level, s, a["levels"][s].get(level, 0), f * total)
    assert set(a["sources"]["test"]) == {"tatoeba", "merlin"}  # both sources reach the small splits


def test_balance_to_the_users_targets_reports_shortfalls(sample):
    info = md.assemble(sample / "questions.jsonl", [sample / "answers.jsonl"], sample / "default")
    for l, t in target_counts().items():
        b = info["balance"][l]
        assert b["target"] == t and b["kept"] == min(t, b["available"]) and b["shortfall"] == max(0, t - b["available"])


def test_proportional_targets_survive_a_level_with_no_usable_answer(sample, tmp_path):
    "Every C2 answer flagged: the other levels keep the user's proportions, C2 is named, shortfalls are against the user's counts."
    qs = read_questions(sample / "questions.jsonl")
    c2 = {q.id for q in qs if q.level == "C2"}
    answers = [a if a["question_id"] not in c2 else {**a, "answer": "Das ist eine sehr gute Frage, und die Antwort ist ganz einfach, mein Freund."}
               for a in clean_answers(qs)]
    write_jsonl(answers, tmp_path / "a.jsonl")
    info = md.assemble(qs, [tmp_path / "a.jsonl"], tmp_path / "ds", targets="proportional")
    bal, goals = info["balance"], target_counts()
    assert info["conversations"] > 30 and info["empty_levels"] == ["C2"]
    assert bal["C2"]["kept"] == 0 and bal["C2"]["shortfall"] == goals["C2"]
    limit = min(bal[l]["available"] / goals[l] for l in LEVEL_CODES if l != "C2")  # the scarcest level sets the scale
    for l in LEVEL_CODES[:-1]:
        assert bal[l]["kept"] == int(limit * goals[l] + 1e-9) and bal[l]["shortfall"] == goals[l] - bal[l]["kept"]
    assert "levels with no usable conversation: C2" in (tmp_path / "ds" / "README.md").read_text()


def test_an_empty_dataset_is_never_written(marco, sample, tmp_path):
    out = tmp_path / "ds"
    md.assemble(sample / "questions.jsonl", [sample / "answers.jsonl"], out, targets="all")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "none.yaml").write_text("A1: 0\n")
    write_jsonl([q.to_dict() for q in read_questions(sample / "questions.jsonl") if not q.authentic_answers], tmp_path / "q.jsonl")
    for questions, targets in ((tmp_path / "q.jsonl", "proportional"), (sample / "questions.jsonl", tmp_path / "none.yaml")):
        r = marco("assemble", "--questions", questions, "--out", out, "--targets", targets)  # no answer at all / a target of 0 everywhere
        assert r.returncode == 2 and "empty train split" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the good dataset, byte for byte


def test_flagged_answers_are_dropped_and_counted(sample, tmp_path):
    qs = read_questions(sample / "questions.jsonl")
    answers = clean_answers(qs)
    answers[0] = {**answers[0], "answer": "Das ist eine sehr gute Frage, und die Antwort ist ganz einfach, mein Freund."}
    write_jsonl(answers, tmp_path / "a.jsonl")
    info = md.assemble(qs, [tmp_path / "a.jsonl"], tmp_path / "ds", targets="all")
    assert info["join"]["generated_flagged"] == 1 and "language:de" in info["join"]["flags"]
    ids = {c["question_id"] for s in md.SPLITS for c in rows_of(tmp_path / "ds", s)}
    assert answers[0]["question_id"] not in ids


def test_collator_never_masks_a_real_eos_even_when_eos_pads(built, tiny_models):
    from datasets import load_from_disk
    ds, _ = built
    tk = load_from_disk(str(ds / "tokenized"))["train"]
    rows = [tk[i] for i in range(4)]
    eos = rows[0]["labels"][-1]
    batch = md.collate(rows, pad_id=eos)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["labels"][i][n - 1].item() == eos and (batch["labels"][i][n:] == -100).all()


def test_length_grouped_batches_pad_less_than_random_and_max_length(built):
    from datasets import load_from_disk
    import random
    ds, _ = built
    lengths = [len(x) for x in load_from_disk(str(ds / "tokenized"))["train"]["input_ids"]]
    order = list(range(len(lengths))); random.Random(0).shuffle(order)
    grouped = md.pad_share(lengths, md.length_grouped_order(lengths, 2, accumulation=2), 2)  # what the Trainer draws at 2 x 2
    assert grouped < md.pad_share(lengths, order, 2) < md.pad_share(lengths, order, 2, pad_to=1024)


def test_marco_assemble_cli_and_bad_input(marco, sample, tmp_path, tiny_models):
    out = tmp_path / "ds"
    r = marco("assemble", "--questions", sample / "questions.jsonl", "--answers", sample / "answers.jsonl", "--out", out,
              "--tokenizer", tiny_models["minerva"], "--targets", "proportional", "--validation", "0.2", "--test", "0.2")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "card.json", "conversations", "dataset", "tokenized", "tokenizer"]
    assert summary["conversations"] == sum(len(rows_of(out, s)) for s in md.SPLITS)
    (tmp_path / "t.yaml").write_text("A1: 3\nQ9: 4\n")
    r = marco("assemble", "--questions", sample / "questions.jsonl", "--out", out, "--targets", tmp_path / "t.yaml")
    assert r.returncode == 2 and "unknown level 'Q9'" in r.stderr and out.exists()  # the old dataset is untouched
    r = marco("assemble", "--questions", sample / "questions.jsonl", "--out", tmp_path / "new", "--tokenizer", tmp_path / "nope")
    assert r.returncode == 2 and "cannot load the tokenizer" in r.stderr and not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written folders left


def tree_hashes(d):
    "Every file under `d` (relative path -> sha256): the folder byte for byte."
    import hashlib
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def bad_answers(kind, sample, d):
    "An answers file that must stop assembly (a typo'd path, empty, torn, made for other questions) and what stderr must name."
    good = (sample / "answers.jsonl").read_text(encoding="utf-8")
    path = d / "answers.jsonl"
    if kind == "missing": return d / "answres.jsonl", ["no such answers file"]  # a typo in the path: that file is not there
    if kind == "empty": path.write_text(""); return path, ["is empty"]
    if kind == "torn":
        path.write_text(good + '{"question_id": "cima-', encoding="utf-8")  # generation killed in the middle of a write
        return path, [f"line {good.count(chr(10)) + 1}:", "marco generate", "same --out"]
    rows = [json.loads(l) for l in good.splitlines()]
    foreign = [r for r in clean_answers(synthetic(60)) if r["question_id"] not in {x["question_id"] for x in rows}]
    write_jsonl(rows[:len(foreign) // 2] + foreign, path)  # two thirds answer another questions file
    return path, [f"{len(foreign)} of {len(foreign) + len(foreign) // 2} answers match no question", "another questions file"]


@pytest.mark.parametrize("kind", ["missing", "empty", "torn", "foreign"])
def test_assemble_refuses_bad_answers_and_keeps_the_previous_dataset(kind, marco, sample, tmp_path, tiny_models):
    "A Drive path typo, an empty or torn file, or answers to other questions: exit 2, one line naming the file, the old dataset intact."
    out = tmp_path / "data" / "ds"
    md.assemble(sample / "questions.jsonl", [sample / "answers.jsonl"], out, targets="all")
    before, listing = tree_hashes(out), sorted(p.name for p in out.parent.iterdir())
    (tmp_path / "in").mkdir()
    answers, says = bad_answers(kind, sample, tmp_path / "in")
    r = marco("assemble", "--questions", sample / "questions.jsonl", "--answers", answers, "--out", out,
              "--tokenizer", tiny_models["minerva"], "--targets", "all")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith(f"marco assemble: error: {answers}"), r.stderr
    assert all(s in r.stderr for s in says), (says, r.stderr)
    assert tree_hashes(out) == before and sorted(p.name for p in out.parent.iterdir()) == listing  # no temp folder left


def test_assemble_reports_questions_without_answer_per_level(marco, sample, tmp_path):
    "A few orphans are tolerated and counted; the questions left without an answer are counted per level in the summary."
    qs = read_questions(sample / "questions.jsonl")
    answers = clean_answers(qs)
    gone = {a["question_id"] for a in answers if a["level"] in ("B1", "C2")}
    orphans = [{**a, "question_id": a["question_id"] + "-elsewhere"} for a in answers[:2]]
    write_jsonl([a for a in answers if a["question_id"] not in gone] + orphans, tmp_path / "a.jsonl")
    want = dict(Counter(q.level for q in qs if q.id in gone and not any(x["text"].strip() for x in q.authentic_answers)))
    assert want and set(want) <= {"B1", "C2"}
    r = marco("assemble", "--questions", sample / "questions.jsonl", "--answers", tmp_path / "a.jsonl", "--out", tmp_path / "ds", "--targets", "all")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)["join"]
    assert j["orphan_answers"] == 2 and j["questions_without_answer"] == sum(want.values())
    assert j["questions_without_answer_by_level"] == {l: want[l] for l in LEVEL_CODES if l in want}
    assert json.loads((tmp_path / "ds" / "card.json").read_text())["join"] == j
    by = ", ".join(f"{l} {want[l]}" for l in LEVEL_CODES if l in want)
    assert f"questions with no usable answer: {sum(want.values())} ({by})" in (tmp_path / "ds" / "README.md").read_text()


def hand_padded(rows, pad_id, multiple=None):
    "The collator as it was written by hand before `DataCollatorForSeq2Seq` (git history): right padding, labels -100."
    import torch
    n = max(len(r["input_ids"]) for r in rows)
    if multiple: n = -(-n // multiple) * multiple
    pad = lambda xs, v: list(xs) + [v] * (n - len(xs))
    return {"input_ids": torch.tensor([pad(r["input_ids"], pad_id) for r in rows]),
            "attention_mask": torch.tensor([pad(r["attention_mask"], 0) for r in rows]),
            "labels": torch.tensor([pad(r["labels"], -100) for r in rows])}


@pytest.mark.parametrize("multiple", [None, 8])
def test_collate_pads_exactly_as_the_hand_written_collator_and_the_library_with_the_real_tokenizer(built, multiple):
    "Same tensors, dtypes included, on the real tokenized rows, whatever the pad id; and the same as the library collator given Minerva's tokenizer."
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq
    ds, _ = built
    tok = AutoTokenizer.from_pretrained(ds / "tokenizer")
    train = load_from_disk(str(ds / "tokenized"))["train"]
    batches = [[train[j] for j in range(i, min(i + 5, len(train)))] for i in range(0, len(train), 5)]
    assert any((hand_padded(b, 0)["attention_mask"] == 0).any() for b in batches)  # rows of different lengths: padding happens
    for pad_id in (tok.pad_token_id, tok.eos_token_id, 0):
        for b in batches:
            got, want = md.collate(b, pad_id, multiple), hand_padded(b, pad_id, multiple)
            assert got.keys() == want.keys()
            for k in want: assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (k, pad_id)
    library = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, pad_to_multiple_of=multiple)
    for b in batches:
        lib, got = library([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in b]), md.collate(b, tok.pad_token_id, multiple)
        assert all(torch.equal(lib[k], got[k]) for k in ("input_ids", "attention_mask", "labels"))


def test_the_templates_generation_mask_marks_exactly_the_labels(built):
    "On the byte-level tiny tokenizer, `return_assistant_tokens_mask` (the template's {% generation %}) selects exactly the labelled tokens."
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    ds, info = built
    tok = AutoTokenizer.from_pretrained(ds / "tokenizer")
    tk = load_from_disk(str(ds / "tokenized"))
    convs = {c["id"]: c for s in md.SPLITS for c in rows_of(ds, s)}
    n = 0
    for s in md.SPLITS:
        for r in tk[s]:
            enc = tok.apply_chat_template(convs[r["id"]]["messages"], return_dict=True, return_assistant_tokens_mask=True)
            assert enc["input_ids"] == r["input_ids"]
            assert [t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"])] == r["labels"]
            n += 1
    assert n == info["conversations"]
