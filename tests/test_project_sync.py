"""Generated files agree with their sources: README.md with nbs/index.ipynb, the package with the notebooks."""
import json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import readme  # noqa: E402


def test_readme_matches_index_notebook():
    assert (ROOT / "README.md").read_text(encoding="utf-8") == readme.render(), "run `make export`"


def test_nbdev_export_leaves_package_unchanged(tmp_path):
    for name in ("settings.ini", "nbs", "gpt_finetune"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    exporter = Path(sys.executable).parent / "nbdev_export"
    res = subprocess.run([str(exporter)], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for path in sorted((ROOT / "gpt_finetune").rglob("*.py")):
        exported = tmp_path / path.relative_to(ROOT)
        assert exported.read_text() == path.read_text(), (f"{path.relative_to(ROOT)} differs from its notebook: "
                                                          "run `make export`")


def test_notebooks_are_clean():
    for nb in sorted((ROOT / "nbs").rglob("*.ipynb")):
        data = json.loads(nb.read_text(encoding="utf-8"))
        for cell in data["cells"]:
            assert cell.get("execution_count") is None, f"{nb.name}: run `nbdev_clean`"
            extra = set(cell.get("metadata", {})) - {"source_sha"}  # the fingerprint `make notebooks` records
            assert not extra, f"{nb.name}: cell metadata {sorted(extra)} left in; run `nbdev_clean`"


# Every notebook a reader can open on Colab starts the same way, and reads nothing that only a clone has.
INSTALL_CELL = """#| hide
import sys
if "google.colab" in sys.modules:  # Colab brings torch; install the package and what these lessons import
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "gpt_finetune[notebooks] @ git+https://github.com/gpt-finetune/gpt_finetune"], check=True)"""
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb")) + sorted((ROOT / "nbs" / "tutorials").glob("*.ipynb"))
LESSONS = [p for p in NOTEBOOKS if p.name != "index.ipynb"]


def _code(nb: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "code"]


def test_every_notebook_has_the_same_install_cell():
    first = {nb: next((s.strip() for s in _code(nb) if not s.strip().startswith("#| default_exp")), "")
             for nb in LESSONS}
    wrong = [str(nb.relative_to(ROOT)) for nb, cell in first.items() if cell != INSTALL_CELL]
    assert not wrong, ("the first code cell (after `#| default_exp`) must be the common install cell:\n"
                       f"{INSTALL_CELL}\nin: " + ", ".join(wrong))


def test_notebooks_read_no_clone_only_paths():
    "On Colab only the installed package exists: a `../configs/x.yaml` or `../gpt_finetune/assets` path fails there."
    clone_only = re.compile(r"""["'](?:\.\./)+[\w.-]|Path\(\s*["']\.\.["']|["']\.\.["']\s*/""")  # not `x == ".."`
    found = [f"{nb.relative_to(ROOT)}: {line.strip()}" for nb in NOTEBOOKS for src in _code(nb)
             for line in src.splitlines() if clone_only.search(line)]
    assert not found, ("paths outside the notebooks' folder exist only in a clone "
                       "(use package data or write the file in the cell):\n" + "\n".join(found))


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#\s]+)", (ROOT / "README.md").read_text(encoding="utf-8")):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), f"README.md links to a missing file: {target}"


def test_readme_links_follow_the_docs_site_layout():
    "index.ipynb may link relative to nbs/ (as the docs site needs); README.md, one folder up, gets them under nbs/."
    tutorials = [f"tutorials/{p.name}" for p in sorted((ROOT / "nbs" / "tutorials").glob("*.ipynb"))]
    md = (" ".join(f"[t]({t})" for t in tutorials) + " [d](00_data.ipynb#load) [r](nbs/00_data.ipynb)"
          " [w](https://nbdev.fast.ai) [q](#quick-start) [m](nope.ipynb)")
    want = (" ".join(f"[t](nbs/{t})" for t in tutorials) + " [d](nbs/00_data.ipynb#load) [r](nbs/00_data.ipynb)"
            " [w](https://nbdev.fast.ai) [q](#quick-start) [m](nope.ipynb)")
    assert readme._root_links(md, ROOT / "nbs") == want


def _lessons() -> list[tuple[str, str]]:
    "(notebook stem, module) for every lesson notebook, in lesson (file name) order."
    found = []
    for nb in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        first = json.loads(nb.read_text(encoding="utf-8"))["cells"][0]["source"]
        m = re.match(r"#\| default_exp (\w+)", "".join(first))
        if m: found.append((nb.stem, m.group(1)))
    return found


def test_every_lesson_is_listed_in_the_readme():
    readme_text = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [nb for nb, module in _lessons() if f"[{nb}](nbs/{nb}.ipynb) | `{module}` |" not in readme_text]
    assert not missing, f"README.md's notebook table lacks {missing}: add them to nbs/index.ipynb"


def test_imports_flow_one_way_along_the_lessons():
    "A module imports only modules whose notebooks come earlier in lesson order, lazily or not."
    order = {module: i for i, (_, module) in enumerate(_lessons())}
    wrong = []
    for module, i in order.items():
        text = (ROOT / "gpt_finetune" / f"{module}.py").read_text(encoding="utf-8")
        for used in re.findall(r"from (?:gpt_finetune)?\.?(\w+) import|import gpt_finetune\.(\w+)", text):
            used = next(u for u in used if u)
            if used in order and order[used] >= i and used != module: wrong.append(f"{module} imports {used}")
    assert not wrong, wrong


def test_no_code_line_is_longer_than_120_characters():
    "Notebook code cells, tests, tools and benchmarks stay readable on GitHub without scrolling."
    files = [(p, "\n".join(_code(p))) for p in sorted((ROOT / "nbs").rglob("*.ipynb"))]
    scripts = [p for d in ("tests", "tools", "benchmarks") for p in (ROOT / d).glob("*.py")]
    files += [(p, p.read_text(encoding="utf-8")) for p in scripts]
    long = [f"{p.relative_to(ROOT)}: {line[:60]}" for p, text in files for line in text.splitlines() if len(line) > 120]
    assert not long, long


def _settings() -> dict:
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return dict(cfg["DEFAULT"])


def test_colab_quickstart_opens_on_a_gpu_and_nbdev_clean_keeps_it(tmp_path):
    "Colab reads `accelerator` and `colab.gpuType` from the notebook: without them the badge opens a CPU runtime."
    name = "02_colab_quickstart.ipynb"
    meta = json.loads((ROOT / "nbs" / "tutorials" / name).read_text(encoding="utf-8"))["metadata"]
    assert (meta.get("accelerator"), meta.get("colab", {}).get("gpuType")) == ("GPU", "T4"), meta
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    (tmp_path / "nbs").mkdir()
    shutil.copy(ROOT / "nbs" / "tutorials" / name, tmp_path / "nbs" / name)
    res = subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", f"nbs/{name}"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "nbs" / name).read_text(encoding="utf-8"))["metadata"] == meta


def test_readme_links_the_docs_site_and_says_how_to_open_the_lessons():
    text, cfg = (ROOT / "README.md").read_text(encoding="utf-8"), _settings()
    site = cfg["doc_host"].rstrip("/") + cfg["doc_baseurl"]
    assert f"]({site})" in text, f"README.md does not link the docs site {site}"
    quick = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    assert "`make lab`" in quick and "01_finetune_your_questions.ipynb" in quick
    assert {"jupyterlab", "ipywidgets"} <= set(cfg["notebooks_requirements"].split())
