"""How long `marco questions` takes at the real corpora's sizes, on synthetic files in their formats.

ManyThings' Italian file has about 350,000 pairs and CIMA 1,135 exchanges; the real files cannot be downloaded
here, so this builds files of those sizes from the bundled samples (sentences recombined, ids renumbered) and times
each reader. Prints a table; asserts nothing. Usage: python benchmarks/corpora_scale.py [--pairs N]
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from marco_lib import corpora as mq


def build(tmp: Path, n_pairs: int, n_exchanges: int) -> dict:
    s = mq.sample_paths()
    base = [l.split("\t")[:2] for l in s["tatoeba"][0].read_text(encoding="utf-8").splitlines()]
    with open(tmp / "ita.txt", "w", encoding="utf-8") as f:
        for i in range(n_pairs):  # recombine two sample sentences so that lengths and vocabulary vary
            (en1, it1), (en2, it2) = base[i % len(base)], base[(i * 7 + 3) % len(base)]
            en, it = (en1, it1) if i % 3 else (f"{en1} {en2}", f"{it1} {it2}")
            en, it = f"{en} ({i})", f"{it} ({i})"  # distinct pairs: numbers are not words to the estimator
            f.write(f"{en}\t{it}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i + 1} (x) & #{10**7 + i} (y)\n")
    ex = json.loads(s["cima"].read_text(encoding="utf-8"))["prepDataset"]
    big = {}
    for i in range(n_exchanges):
        e = json.loads(json.dumps(ex[str(i % len(ex))]))
        e["past_convo"][-1] += f" ({i})"  # distinct questions, as in the real release
        big[str(i)] = e
    (tmp / "dataset.json").write_text(json.dumps({"prepDataset": big, "shapeDataset": {}}))
    return {"tatoeba": [tmp / "ita.txt"], "cima": tmp / "dataset.json"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=350_000)
    ap.add_argument("--exchanges", type=int, default=1_135)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = build(Path(d), a.pairs, a.exchanges)
        rows = []
        for name, kw in [("cima", {"cima": files["cima"]}), ("tatoeba", {"tatoeba": files["tatoeba"]})]:
            t = time.perf_counter()
            records, summary = mq.collect_questions(**kw)
            secs = time.perf_counter() - t
            rows.append((name, summary["sources"][name]["read"], len(records), secs, len(records) / secs))
            t = time.perf_counter()
            mq.write_jsonl((q.to_dict() for q in records), Path(d) / f"{name}.jsonl")
            rows[-1] += (time.perf_counter() - t, (Path(d) / f"{name}.jsonl").stat().st_size / 2**20)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    print(f"{'source':<8} {'records':>8} {'questions':>9} {'read s':>7} {'q/s':>8} {'write s':>7} {'MiB':>6}")
    for name, n, q, s, qps, ws, mib in rows:
        print(f"{name:<8} {n:>8} {q:>9} {s:>7.1f} {qps:>8.0f} {ws:>7.1f} {mib:>6.1f}")


if __name__ == "__main__":
    main()
