"""Draw the README's two figures from a real run on the tiny models: `python notebooks/images/readme_figures.py` (about a minute on two cores).

The demo's data and models (bundled samples, the cached demo generator, the tiny random-weight Minerva), trained for
longer than the demo so the per-level curves move, then `marco evaluate`'s report: notebooks/images/levels.png and
notebooks/images/report.png. The figures show what the plots look like, not what the real models reach."""
import tempfile
from pathlib import Path

from marco_lib.demo import run_demo
from marco_lib.evaluate import evaluate, load_marco, plot_report
from marco_lib.tiny import tiny_models
from marco_lib.train import plot_level_losses, train

IMAGES = Path(__file__).resolve().parent
LONGER = dict(eval_steps=6, save_steps=6, logging_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2,
              per_device_eval_batch_size=4, num_train_epochs=12, learning_rate=1e-2)

if __name__ == "__main__":
    work = Path(tempfile.mkdtemp())
    run_demo(work / "demo", log=lambda *_: None)
    m = train(work / "demo" / "data", str(tiny_models()["minerva"]), work / "run", gpu="CPU", preset="debug", report_to="none",
              overrides=LONGER, log=lambda *_: None)
    IMAGES.mkdir(exist_ok=True)
    plot_level_losses(m["eval_history"]).savefig(IMAGES / "levels.png", dpi=90)
    model, tok = load_marco(work / "run")
    plot_report(evaluate(model, tok, work / "demo" / "data", per_level=3, max_new_tokens=64)).savefig(IMAGES / "report.png", dpi=90)
    print(f"{IMAGES / 'levels.png'}, {IMAGES / 'report.png'}: {m['global_step']} steps, {len(m['eval_history'])} evaluations")
