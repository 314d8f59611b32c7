"""Repository invariants: the README is index.ipynb, CI runs the README's test command, notebooks open in Colab.

Run `python tests/test_repo.py` to point every Colab badge and install cell at the repository `settings.ini` names (`user`,
`repo`, `branch`: what a fork changes) and to rewrite README.md from notebooks/index.ipynb;
`python tests/test_repo.py --test-command` prints the README's test command (CI runs exactly that)."""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RUNBOOKS = sorted((ROOT / "notebooks" / "colab").glob("*.ipynb"))
ALL_NOTEBOOKS = [*NOTEBOOKS, *RUNBOOKS, *sorted((ROOT / "nbs_tests").glob("*.ipynb"))]


def settings() -> dict:
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    return dict(cfg["DEFAULT"])


def repo_links() -> list:
    "(pattern, what every match must be) for the links that name the repository: Colab badges and pip install lines."
    s = settings()
    slug, branch = f"{s['user']}/{s['repo']}", s["branch"]
    return [(r"colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/", f"colab.research.google.com/github/{slug}/blob/{branch}/"),
            (r"git\+https://github\.com/[\w.-]+/[\w.-]+?(?=[\"'\\\s@#]|$)", f"git+https://github.com/{slug}")]


def sync_repo_links() -> list:
    "Point every notebook's badges and install lines at settings.ini's repository; the files changed."
    changed = []
    for nb in ALL_NOTEBOOKS:
        text = new = nb.read_text(encoding="utf-8")
        for pattern, target in repo_links(): new = re.sub(pattern, target, new)
        if new != text: nb.write_text(new, encoding="utf-8"); changed.append(nb)
    return changed


def cells(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


def cell_markdown(c: dict) -> str:
    "A markdown cell as it is; a code cell as a python block followed by its saved text output; hidden cells (`#|`) as nothing."
    src = "".join(c["source"]).strip()
    if c["cell_type"] == "markdown": return src
    if c["cell_type"] != "code" or src.startswith("#|"): return ""
    out = "".join("".join(o.get("text", "")) or "".join(o.get("data", {}).get("text/plain", "")) for o in c.get("outputs", []))
    return f"```python\n{src}\n```" + (f"\n\n```\n{out.rstrip()}\n```" if out.strip() else "")


def render_readme() -> str:
    "README.md is notebooks/index.ipynb, cell by cell: its prose, and its code with the saved outputs."
    return "\n\n".join(md for c in cells(ROOT / "notebooks/index.ipynb") if (md := cell_markdown(c))) + "\n"


def readme_commands() -> list:
    "The shell commands of the README's first section (its first two sh blocks)."
    return re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)[:2]


def test_readme_is_rendered_from_index():
    assert (ROOT / "README.md").read_text(encoding="utf-8") == render_readme(), \
        "README.md is out of date: run `python tests/test_repo.py`"


def test_every_image_the_readme_shows_is_in_the_repository():
    images = re.findall(r"!\[[^\]]*\]\((?!https?:)([^)\s]+)\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert images and all((ROOT / i).is_file() and (ROOT / i).read_bytes()[:4] == b"\x89PNG" for i in images), images


def test_readme_gives_the_main_job_and_the_test_command_first():
    main_job, tests = readme_commands()
    assert main_job.startswith("pip install torch==2.13.0 && pip install -e .") and main_job.endswith("marco demo")
    parts = tests.split(" && ")
    for start in ("nbdev_test --do_print", "nbdev_test --path nbs_tests --do_print", "pytest"):  # every notebook's time is printed
        assert any(p.startswith(start) for p in parts), start


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert 'python tests/test_repo.py --test-command' in ci and 'bash -c "$test_cmd"' in ci


def test_every_link_to_the_repository_is_the_one_settings_names():
    s = settings()
    assert s["git_url"] == f"https://github.com/{s['user']}/{s['repo']}", "settings.ini: git_url must match user and repo"
    for path in [*ALL_NOTEBOOKS, ROOT / "README.md"]:
        text = path.read_text(encoding="utf-8")
        for pattern, target in repo_links():
            assert all(m == target for m in re.findall(pattern, text)), f"{path.name}: run `python tests/test_repo.py`"


def test_every_notebook_opens_in_colab_and_installs_itself_first():
    s = settings()
    for nb in ALL_NOTEBOOKS:
        if nb.name == "index.ipynb": continue
        cs = cells(nb)
        text = "".join("".join(c["source"]) for c in cs if c["cell_type"] == "markdown")
        where = nb.relative_to(ROOT).as_posix()
        assert f"colab.research.google.com/github/{s['user']}/{s['repo']}/blob/{s['branch']}/{where}" in text, nb.name
        first_code = "".join(next(c for c in cs if c["cell_type"] == "code")["source"])
        assert "pip" in first_code and "install" in first_code, nb.name
        if nb in RUNBOOKS: assert 'find_spec("marco_lib") is None' in first_code, f"{nb.name}: install only when not importable"
        else: assert first_code.startswith("#| eval: false"), nb.name
        heading = "".join(cs[0]["source"])
        assert heading.startswith("# ") and "\n> " in heading, f"{nb.name}: H1 title and '>' summary first"


def test_nbdev_test_skips_gpu_cells_unless_asked():
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    assert "gpu" in cfg["DEFAULT"]["tst_flags"].split()
    assert cfg["DEFAULT"]["nbs_path"] == "notebooks" and cfg["DEFAULT"]["lib_path"] == "marco_lib"


def test_notebooks_never_trust_remote_code():
    for nb in ALL_NOTEBOOKS:
        assert "trust_remote_code=True" not in nb.read_text(encoding="utf-8"), nb.name
    for py in (ROOT / "marco_lib").glob("*.py"):
        assert "trust_remote_code=True" not in py.read_text(encoding="utf-8"), py.name


if __name__ == "__main__":
    if sys.argv[1:] == ["--test-command"]: print(readme_commands()[1])  # what .ci/run executes
    else:
        for nb in sync_repo_links(): print(f"{nb.relative_to(ROOT)}: links now point at settings.ini's repository", file=sys.stderr)
        (ROOT / "README.md").write_text(render_readme(), encoding="utf-8")
        print("README.md written from notebooks/index.ipynb", file=sys.stderr)
