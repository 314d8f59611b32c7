"Level fidelity: where answers land on the CEFR scale against the level asked, and how far the estimator can be trusted."
import json

import pytest

from marco_lib import evaluate as me
from marco_lib.corpora import LevelEstimator, calibrate

A1_ANSWERS = ["Ciao! Io sono Marco. Sono di Roma.",  # A1, 7 words: below A1's band of 10-150
              "Il gatto dorme sul divano. La casa è piccola ma bella.",  # A1, 11 words
              "Mi chiamo Anna e abito a Milano con la mia famiglia. Lavoro in un negozio.",  # A2, 15 words
              "Ieri sono andato al mercato con mia sorella e abbiamo comprato frutta fresca per la settimana.",  # B2, 16 words
              ""]  # no words: no estimate, a miss, below the band


def test_level_fidelity_gives_the_shares_computed_by_hand():
    assert [LevelEstimator().estimate(a) for a in A1_ANSWERS] == ["A1", "A1", "A2", "B2", None]
    f = me.level_fidelity(A1_ANSWERS, "A1")
    assert f["n"] == 5 and f["estimated"] == {"A1": 2, "A2": 1, "B1": 0, "B2": 1, "C1": 0, "C2": 0, "none": 1}
    assert (f["exact"], f["within_one"], f["mean_offset"]) == (0.4, 0.6, 1.0)  # 2/5, 3/5, (0+0+1+3)/4
    assert f["words"] == 9.8 and f["length_band"] == {"min": 10, "max": 150}
    assert f["band"] == {"below": 0.4, "within": 0.6, "above": 0.0}
    assert 0 <= f["gulpease"] <= 100
    c2 = me.level_fidelity(A1_ANSWERS[:4], "C2")  # the same answers asked at C2: far simpler than asked
    assert (c2["exact"], c2["within_one"], c2["mean_offset"]) == (0.0, 0.0, -4.0)  # (-5 - 5 - 4 - 2) / 4
    assert "none" not in c2["estimated"]


def test_level_fidelity_uses_the_estimator_given():
    everything_c2 = LevelEstimator((-100, -99, -98, -97, -96))
    f = me.level_fidelity(A1_ANSWERS[:4], "C2", everything_c2)
    assert f["estimated"]["C2"] == 4 and f["exact"] == 1.0 and f["mean_offset"] == 0.0


def test_estimator_trust_grades():
    assert {t["grade"] for t in me.estimator_trust().values()} == {"prior"}
    merlin = LevelEstimator((0.4, 1.2, 2.6, 3.6, 4.6), calibrated_on="fitted on 806 labelled texts")
    t = me.estimator_trust(merlin)  # no report: MERLIN's published Italian counts
    assert [(l, t[l]["grade"], t[l]["gold_texts"]) for l in me.LEVEL_CODES] == [
        ("A1", "calibrated", 29), ("A2", "calibrated", 381), ("B1", "calibrated", 394), ("B2", "thin", 2),
        ("C1", "extrapolated", 0), ("C2", "extrapolated", 0)]
    assert "MERLIN" in t["A1"]["note"] and "ordering" in t["C2"]["note"]
    report = {"levels": {"A1": 25, "A2": 3}, "cross_validated": {"n": 28, "exact": 0.5, "within_one": 0.875}}
    t = me.estimator_trust(merlin, report)
    assert [t[l]["grade"] for l in me.LEVEL_CODES] == ["calibrated", "thin"] + ["extrapolated"] * 4
    assert "25 gold texts" in t["A1"]["note"] and "88%" in t["A1"]["note"]
    assert all(n["note"].count(". ") == 0 and n["note"].endswith(".") for n in t.values())  # one sentence each


def test_estimator_trust_takes_a_real_calibration_report():
    est, report = calibrate(A1_ANSWERS[:4] * 6, ["A1", "A1", "A2", "B1"] * 6)
    t = me.estimator_trust(est, report)
    assert [t[l]["gold_texts"] for l in me.LEVEL_CODES] == [12, 6, 6, 0, 0, 0]
    assert [t[l]["grade"] for l in me.LEVEL_CODES] == ["thin", "thin", "thin", "extrapolated", "extrapolated", "extrapolated"]


def test_describe_level_renders_one_line():
    d = me.describe_level(A1_ANSWERS[2], "a1")
    assert (d["estimated"], d["asked"], d["words"], d["in_band"], d["trust"]) == ("A2", "A1", 15, True, "prior")
    assert d["line"] == "[estimated level A2 (asked A1) · 15 words (band 10-150) · Gulpease 90 · trust: prior]"
    assert me.describe_level("", "B1")["line"].startswith("[estimated level none (asked B1) · 0 words")


@pytest.mark.parametrize("shape", ["bare", "wrapped"])
def test_load_estimator_reads_both_shapes(tmp_path, shape):
    est, report = calibrate(A1_ANSWERS[:4] * 6, ["A1", "A1", "A2", "B1"] * 6)
    f = tmp_path / "estimator.json"
    f.write_text(json.dumps(est.to_dict() if shape == "bare" else {"estimator": est.to_dict(), "calibration": report}))
    got, cal = me.load_estimator(f)
    assert got == est and cal == (None if shape == "bare" else report)


@pytest.mark.parametrize("text", ['{"cuts": [1, 2]}', "not json", '{"estimator": {"cuts": [0, 1, 2, 3, 4]}, "calibration": 3}', "[]"])
def test_load_estimator_names_a_bad_file(tmp_path, text):
    f = tmp_path / "bad-estimator.json"
    f.write_text(text)
    with pytest.raises(ValueError, match="bad-estimator.json: not a level estimator file"): me.load_estimator(f)


def test_the_report_reaches_wandb_with_each_levels_fidelity(tmp_path, monkeypatch):
    import glob
    import wandb
    from pathlib import Path
    monkeypatch.setenv("WANDB_MODE", "offline")
    report = {"levels": [{"level": "A1", "base_loss": 2.0, "tuned_loss": 1.5, "gulpease": {"base": 60, "tuned": 70, "reference": 80}}],
              "stop_rate": {"base": 0.5, "tuned": 1.0},
              "fidelity": [{"level": "A1", "base": me.level_fidelity(["Ciao."], "A1"), "tuned": me.level_fidelity(["Ciao, come stai?"], "A1"),
                            "trust": me.estimator_trust()["A1"]}]}
    run = wandb.init(project="marco-test", dir=str(tmp_path))
    try: assert me._log_to_wandb(report)
    finally: run.finish()
    data = b"".join(Path(f).read_bytes() for f in glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert b"eval/A1/within_one_tuned" in data and b"eval/A1/tuned_loss" in data
