"Corpus readers: the real formats, exact CIMA pairing, gold MERLIN levels, Tatoeba spread, bad input, the CLI."
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from marco_lib import corpora as mq
from marco_lib.io import write_jsonl
from marco_lib.text import normalise
from marco_lib.levels import LEVEL_CODES

SAMPLES = mq.sample_paths()
MERLIN_FILE = next(iter(sorted(SAMPLES["merlin"].glob("*.txt"))))


# ---------------------------------------------------------------- each reader on the bundled samples (the real formats)

def test_cima_pairs_last_student_turn_with_tutor_responses():
    path = SAMPLES["cima"]
    raw = json.loads(path.read_text())["prepDataset"]
    res = mq.read_cima(path)
    assert (res.read, len(res.rejected), len(res.questions)) == (len(raw), 0, len(raw))
    for q in res.questions:
        ex = raw[q.meta["key"]]
        assert q.question == ex["past_convo"][-1].strip()  # the student's last turn, never a later one
        assert [t["text"] for t in q.context] == [t.strip() for t in ex["past_convo"][:-1]]
        assert q.context[-1]["role"] == "tutor" and q.context[0]["role"] == "tutor"
        assert [a["text"] for a in q.authentic_answers] == [t.strip() for t in ex["tutorResponses"]]
        assert q.level in ("A1", "A2") and q.level_method == "rule"
    assert sum(len(q.authentic_answers) for q in res.questions) == sum(len(e["tutorResponses"]) for e in raw.values())


def test_cima_grammar_rules_are_parsed_never_sliced():
    res = mq.read_cima(SAMPLES["cima"])
    formats = Counter(q.meta["grammar_rules_format"] for q in res.questions)
    assert formats["json"] > 0 and formats["json+extra"] > 0  # both JSON shapes of the real data
    for q in res.questions:
        assert all(r["rule"] and "[[" not in r["rule"] and '"]' not in r["rule"] for r in q.meta["grammar_rules"])
        for a in q.authentic_answers:
            assert not re.search(r'\[\s*\[|"\]\]|old_classif|Grammar note', a["text"]), a["text"]


def test_cima_questions_repeat_only_when_the_conversation_does():
    raw = json.loads(SAMPLES["cima"].read_text())["prepDataset"]
    qs = mq.read_cima(SAMPLES["cima"]).questions
    assert len({q.id for q in qs}) == len(qs)
    convo = lambda q: tuple(normalise(t) for t in raw[q.meta["key"]]["past_convo"])
    for a in qs:  # two questions share a key exactly when their exchanges share the conversation (the sample has one such pair)
        assert [mq._key(b) == mq._key(a) for b in qs] == [convo(b) == convo(a) for b in qs]
    assert len({mq._key(q) for q in qs}) == len(qs) - 1


def test_merlin_levels_are_the_files_overall_rating():
    res = mq.read_merlin(SAMPLES["merlin"])
    assert (res.read, len(res.questions)) == (8, 7)
    assert [(Path(r.file).name, r.reason.split(":")[0]) for r in res.rejected] == [("9001_0000008.txt", "unrated")]
    for q in res.questions:
        text = (SAMPLES["merlin"] / q.meta["file"]).read_text(encoding="utf-8")
        assert q.level == re.search(r"Overall CEFR rating: (\S+)", text)[1] and q.level_method == "gold"
        assert " ," in re.search(r"Target hypothesis 1: *\n+(.+)", text)[1]  # the file's target is tokenised...
        assert q.reference and " ," not in q.reference and " ." not in q.reference  # ...the reference is not
        assert q.meta["learner_text"] in q.question
    _, summary = mq.collect_questions(merlin=SAMPLES["merlin"])
    agree = summary["estimator_agreement"]["merlin"]
    assert agree["n"] == 7 and 0 <= agree["exact"] <= agree["within_one"] <= 1


def test_tatoeba_questions_spread_over_levels_and_phrasings():
    res = mq.read_tatoeba([SAMPLES["tatoeba"][0]], seed=0)
    assert (res.read, len(res.questions), len(res.rejected)) == (60, 60, 0)
    levels = Counter(q.level for q in res.questions)
    phrasings = Counter(q.meta["phrasing"] for q in res.questions)
    assert len(levels) >= 5, levels
    assert max(phrasings.values()) <= len(res.questions) / 5, phrasings.most_common(3)
    for q in res.questions:
        want = "en" if q.level in ("A1", "A2") else "it"
        assert q.language == want
        assert q.meta["it"] in q.question or q.meta["en"] in q.question


# ---------------------------------------------------------------- bundled samples and determinism

def test_samples_cover_every_source_and_reject_only_the_unrated_file():
    records, summary = mq.collect_questions(**SAMPLES)
    assert set(summary["sources"]) == {"cima", "tatoeba", "merlin", "celi"}
    assert [(r["source"], r["reason"].split(":")[0]) for r in summary["rejected"]] == [("merlin", "unrated")]
    assert summary["sources"]["cima"]["duplicates"] == 1  # two exchanges share their conversation
    merged = next(q for q in records if q.source == "cima" and q.question == "how do you say cat?")
    assert len(merged.authentic_answers) == 5  # 3 + 2 tutor answers, none lost in the merge
    assert summary["sources"]["tatoeba"]["skipped"] == {"Italian sentence without an English translation": 1}
    assert set(summary["levels"]) == set(LEVEL_CODES)


def test_same_seed_same_file_different_seed_different_questions(tmp_path):
    a, b, c = (mq.collect_questions(**SAMPLES, seed=s)[0] for s in (7, 7, 8))
    pa = write_jsonl([q.to_dict() for q in a], tmp_path / "a.jsonl")
    pb = write_jsonl([q.to_dict() for q in b], tmp_path / "b.jsonl")
    assert pa.read_bytes() == pb.read_bytes()
    assert [q.id for q in a] == [q.id for q in c]  # ids come from the data, not the seed
    assert [q.question for q in a] != [q.question for q in c]


def test_tatoeba_levels_follow_the_task_and_the_sentence():
    hard = mq.Pair("Notwithstanding the objections, it passed.",
                   "Nonostante le obiezioni sollevate dall'opposizione, la proposta è stata approvata all'unanimità dal consiglio comunale.",
                   "1-2", "f", "line 1")
    est = mq.LevelEstimator().estimate(hard.it)
    assert mq.level_rank(est) >= 3
    for seed in range(20):  # whatever the task, the level never drops below the sentence's estimate
        q = mq.tatoeba_question(hard, seed)
        assert mq.level_rank(q.level) >= mq.level_rank(est) and q.language == "it"


def test_a_large_pairs_file_keeps_every_phrasing_under_a_fifth(tmp_path):
    words = ["casa", "treno", "libro", "amico", "città", "lavoro", "mare", "scuola"]
    lines = [f"Sentence {i}.\tLa {words[i % 8]} numero {i} è qui.\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i} (a) & #{10**6 + i} (b)"
             for i in range(3000)]
    (tmp_path / "ita.txt").write_text("\n".join(lines) + "\n")
    qs = mq.read_tatoeba([tmp_path / "ita.txt"], seed=1).questions
    assert len(qs) == 3000 and len({q.id for q in qs}) == 3000
    share = max(Counter(q.meta["phrasing"] for q in qs).values()) / len(qs)
    assert share <= 0.2
    assert qs[5].id == "tatoeba-1000005-5" and qs[5].meta["attribution"].endswith("#1000005 (b)")


def test_tatoeba_exports_link_in_either_direction(tmp_path):
    (tmp_path / "ita_sentences.tsv").write_text("10\tita\tBuona notte.\n11\tita\tA domani.\n")
    (tmp_path / "eng_sentences.tsv").write_text("20\teng\tGood night.\n21\teng\tSee you tomorrow.\n22\teng\tUnlinked.\n")
    (tmp_path / "links.tsv").write_text("10\t20\n21\t11\n")
    res = mq.read_tatoeba(sorted(tmp_path.iterdir()))
    assert sorted((q.meta["en"], q.meta["it"]) for q in res.questions) == [("Good night.", "Buona notte."), ("See you tomorrow.", "A domani.")]
    with pytest.raises(mq.CorpusError, match="links"):
        mq.read_tatoeba([tmp_path / "ita_sentences.tsv", tmp_path / "eng_sentences.tsv"])


def test_celi_levels_come_from_metadata_or_file_name_never_a_default(tmp_path):
    f = tmp_path / "export.tsv"
    f.write_text("left\tkeyword\tright\tmeta\n"
                 "Penso che\tsia\tgiusto.\tCELI 3 - testo 1\n"
                 "Credo che\tabbia\tragione.\tcandidato 7\n"
                 "Io\tsono\tqui.\tlivello A2\n"
                 "solo\tdue\n")
    res = mq.read_celi([f])
    assert [(q.level, q.meta["keyword"]) for q in res.questions] == [("B2", "sia")]
    reasons = {r.where: r.reason for r in res.rejected}
    assert reasons == {"line 3": "no CEFR level in the metadata column or the file name",
                       "line 4": "metadata: level A2 is outside CELI's B1-C2",
                       "line 5": "expected 4 tab-separated columns (left context, keyword, right context, metadata), found 2"}
    named = tmp_path / "celi_B1.tsv"; shutil.copy(f, named)
    assert len(mq.read_celi([named]).questions) == 2  # line 3 now takes the file's level
    plain = tmp_path / "tema.txt"; plain.write_text("Un testo senza livello.\n")
    with pytest.raises(mq.CorpusError, match="no CEFR level"):
        mq.read_celi([plain])
    plain.write_text("Livello: C2\n\nPrimo paragrafo.\n\nSecondo\nparagrafo.\n")
    res = mq.read_celi([plain])
    assert [(q.level, q.meta["where"]) for q in res.questions] == [("C2", "line 3"), ("C2", "line 5")]


# ---------------------------------------------------------------- bad input, reader by reader

def _cima_text():
    return SAMPLES["cima"].read_text(encoding="utf-8")


BAD_FILES = {  # name -> (file content as bytes, the reason the reader must give)
    "empty": (b"", "empty file"),
    "binary": (b"BZh91AY&SY\x00\x01\x02\xff" * 10, "binary data"),
    "latin1": ("Perch\xe9 no?\tWhy not?\n".encode("latin-1"), "not UTF-8"),
}


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
@pytest.mark.parametrize("reader", ["cima", "tatoeba", "celi"])
def test_unreadable_files_stop_with_a_clear_reason(tmp_path, reader, bad):
    data, reason = BAD_FILES[bad]
    f = tmp_path / f"{reader}.txt"; f.write_bytes(data)
    read = {"cima": mq.read_cima, "tatoeba": lambda p: mq.read_tatoeba([p]), "celi": lambda p: mq.read_celi([p])}[reader]
    with pytest.raises(mq.CorpusError, match=reason) as e:
        read(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_truncated_or_wrong_shape_cima_is_refused(tmp_path):
    f = tmp_path / "dataset.json"
    f.write_text(_cima_text()[:500])
    with pytest.raises(mq.CorpusError, match="not valid JSON at line .* truncated"):
        mq.read_cima(f)
    f.write_text(json.dumps([{"past_convo": ["hi", "ciao"]}]))
    with pytest.raises(mq.CorpusError, match="prepDataset"):
        mq.read_cima(f)


def test_malformed_cima_exchanges_are_skipped_with_their_key(tmp_path):
    data = json.loads(_cima_text())
    data["prepDataset"]["3"]["past_convo"] = data["prepDataset"]["3"]["past_convo"][:-1]  # ends on the tutor
    data["prepDataset"]["5"] = "not an exchange"
    del data["prepDataset"]["7"]["tutorResponses"]
    f = tmp_path / "dataset.json"; f.write_text(json.dumps(data))
    res = mq.read_cima(f)
    assert {r.where: r.reason.split(":")[0].split(" is ")[0] for r in res.rejected} == {
        "prepDataset record 3": "past_convo has 3 turns", "prepDataset record 5": "expected an object, found str",
        "prepDataset record 7": "tutorResponses"}
    assert len(res.questions) == 9 and res.read == 12


def test_tatoeba_bad_lines_are_reported_with_line_numbers(tmp_path):
    f = tmp_path / "ita.txt"
    f.write_text("Hello.\tCiao.\nno tab here\nOne\tUno\tattr\textra\n\tVuoto.\nBye.\tCiao ciao.\n")
    res = mq.read_tatoeba([f])
    assert len(res.questions) == 2
    assert [(r.where, r.reason.split(" (")[0].split(",")[0]) for r in res.rejected] == [
        ("line 2", "expected 2 or 3 tab-separated columns"), ("line 3", "expected 2 or 3 tab-separated columns"),
        ("line 4", "empty English or Italian sentence")]
    f.write_text("a\tb\tc\td\te\n")
    with pytest.raises(mq.CorpusError, match="not a Tatoeba file"):
        mq.read_tatoeba([f])


def test_merlin_bad_files_are_skipped_and_named(tmp_path):
    good = MERLIN_FILE.read_text(encoding="utf-8")
    (tmp_path / "ok.txt").write_text(good)
    (tmp_path / "truncated.txt").write_text(good.split("Learner text")[0])
    (tmp_path / "latin1.txt").write_bytes(good.replace("Ciao", "Perché").encode("latin-1", "replace"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "notes.txt").write_text("just some notes\n")
    res = mq.read_merlin(tmp_path)
    assert len(res.questions) == 1 and res.read == 5
    reasons = {Path(r.file).name: r.reason for r in res.rejected}
    assert "Learner text" in reasons["truncated.txt"] and "not UTF-8" in reasons["latin1.txt"]
    assert "empty file" in reasons["empty.txt"] and "METADATA" in reasons["notes.txt"]
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(mq.CorpusError, match="no .txt files"):
        mq.read_merlin(tmp_path / "empty-folder")


def test_merlin_folder_without_merlin_files_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    with pytest.raises(mq.CorpusError, match="none of the 1 .txt files"):
        mq.read_merlin(tmp_path)
    with pytest.raises(mq.CorpusError, match="not a directory"):
        mq.read_merlin(tmp_path / "a.txt")


def test_read_questions_rejects_a_torn_or_foreign_line(tmp_path):
    records, _ = mq.collect_questions(cima=SAMPLES["cima"])
    p = write_jsonl([q.to_dict() for q in records], tmp_path / "q.jsonl")
    assert [q.to_dict() for q in mq.read_questions(p)] == [q.to_dict() for q in records]
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:3] + ['{"id": "x", "source": "cima", "level": "Z9", "level_method": "rule", "question": "?", "language": "en"}']) + "\n")
    with pytest.raises(mq.CorpusError, match="line 4.*Z9"):
        mq.read_questions(p)


# ---------------------------------------------------------------- the command

def test_marco_questions_writes_jsonl_and_a_summary(marco, tmp_path):
    out = tmp_path / "questions.jsonl"
    r = marco("questions", "--cima", SAMPLES["cima"], "--tatoeba", *SAMPLES["tatoeba"], "--merlin", SAMPLES["merlin"],
              "--celi", *SAMPLES["celi"], "--out", out, "--seed", 5)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == summary["questions"] and summary["out"] == str(out)
    assert {"id", "source", "level", "question", "context", "reference", "authentic_answers", "meta"} <= set(rows[0])
    assert sum(s["written"] for s in summary["sources"].values()) == len(rows)
    assert summary["authentic_answers"] == sum(len(r["authentic_answers"]) for r in rows) == 34
    assert [x["file"].endswith("9001_0000008.txt") for x in summary["rejected"]] == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["questions.jsonl"]  # no temporary files left


@pytest.mark.parametrize("args,reason", [
    ((), "no corpus given"),
    (("--cima", "missing.json"), "no such file"),
    (("--merlin", "{empty}"), "no .txt files"),
])
def test_marco_questions_fails_cleanly_and_keeps_the_old_output(marco, tmp_path, args, reason):
    out = tmp_path / "questions.jsonl"
    out.write_text("previous run\n")
    (tmp_path / "empty").mkdir()
    r = marco("questions", *(a.format(empty=tmp_path / "empty") for a in args), "--out", out)
    assert r.returncode == 2 and reason in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert out.read_text() == "previous run\n"


def test_marco_questions_on_bad_bytes_gives_one_line(marco, tmp_path):
    bad = tmp_path / "ita.txt"; bad.write_bytes("Perch\xe9?\tWhy?\n".encode("latin-1"))
    r = marco("questions", "--tatoeba", bad, "--out", tmp_path / "q.jsonl")
    assert (r.returncode, r.stderr.count("\n")) == (2, 1) and "not UTF-8 (byte 0xe9 on line 1" in r.stderr
    assert not (tmp_path / "q.jsonl").exists()


def test_calibration_moves_cut_points_to_the_gold_levels():
    prior = mq.LevelEstimator()
    texts = [f.read_text(encoding="utf-8") for f in sorted(SAMPLES["merlin"].glob("*.txt"))]
    parsed = [mq.parse_merlin(t) for t in texts]
    rated = [(mq.clean_lines(p["learner_text"]), p["overall"]) for p in parsed if p["overall"]]
    est, report = mq.calibrate([t for t, _ in rated] * 3, [l for _, l in rated] * 3)
    assert report["fitted"]["exact"] >= report["prior"]["exact"]
    assert report["texts"] == 21 and est.cuts != prior.cuts and list(est.cuts) == sorted(est.cuts)
    assert mq.LevelEstimator.from_dict(json.loads(json.dumps(est.to_dict()))) == est
