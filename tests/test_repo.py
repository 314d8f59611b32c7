"""Repository invariants: the README is index.ipynb, CI runs the README's test command, notebooks open in Colab.

Run `python tests/test_repo.py` to rewrite README.md from notebooks/index.ipynb;
`python tests/test_repo.py --test-command` prints the README's test command (CI runs exactly that)."""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def cells(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


def render_readme() -> str:
    "README.md is the markdown of notebooks/index.ipynb, cell by cell."
    return "\n\n".join("".join(c["source"]).strip() for c in cells(ROOT / "notebooks/index.ipynb")
                       if c["cell_type"] == "markdown") + "\n"


def readme_commands() -> list:
    "The shell commands of the README's first section (its first two sh blocks)."
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)[:2]


def test_readme_is_rendered_from_index():
    assert (ROOT / "README.md").read_text(encoding="utf-8") == render_readme(), \
        "README.md is out of date: run `python tests/test_repo.py`"


def test_readme_gives_the_main_job_and_the_test_command_first():
    main_job, tests = readme_commands()
    assert main_job.startswith("pip install torch==2.13.0 && pip install -e .") and main_job.endswith("marco demo")
    for part in ("nbdev_test", "nbdev_test --path nbs_tests", "pytest"):
        assert part in tests.split(" && ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert 'python tests/test_repo.py --test-command' in ci and 'bash -c "$test_cmd"' in ci


def test_every_notebook_opens_in_colab_and_installs_itself_first():
    for nb in [*NOTEBOOKS, *sorted((ROOT / "nbs_tests").glob("*.ipynb"))]:
        if nb.name == "index.ipynb": continue
        cs = cells(nb)
        text = "".join("".join(c["source"]) for c in cs if c["cell_type"] == "markdown")
        assert f"colab.research.google.com/github/marco-lib/marco_lib/blob/main/{nb.parent.name}/{nb.name}" in text, nb.name
        first_code = "".join(next(c for c in cs if c["cell_type"] == "code")["source"])
        assert first_code.startswith("#| eval: false") and "pip install" in first_code, nb.name
        heading = "".join(cs[0]["source"])
        assert heading.startswith("# ") and "\n> " in heading, f"{nb.name}: H1 title and '>' summary first"


def test_nbdev_test_skips_gpu_cells_unless_asked():
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    assert "gpu" in cfg["DEFAULT"]["tst_flags"].split()
    assert cfg["DEFAULT"]["nbs_path"] == "notebooks" and cfg["DEFAULT"]["lib_path"] == "marco_lib"


def test_notebooks_never_trust_remote_code():
    for nb in [*NOTEBOOKS, *(ROOT / "nbs_tests").glob("*.ipynb")]:
        assert "trust_remote_code=True" not in nb.read_text(encoding="utf-8"), nb.name
    for py in (ROOT / "marco_lib").glob("*.py"):
        assert "trust_remote_code=True" not in py.read_text(encoding="utf-8"), py.name


if __name__ == "__main__":
    if sys.argv[1:] == ["--test-command"]: print(readme_commands()[1])  # what .ci/run executes
    else:
        (ROOT / "README.md").write_text(render_readme(), encoding="utf-8")
        print("README.md written from notebooks/index.ipynb", file=sys.stderr)
