"""The notebooks carry their outputs, and the outputs are current.

A reader sees a lesson on GitHub or the docs site without running it, so every cell that displays something
must have its output saved, and that output must come from the cell as it is now. `make notebooks` executes
the notebooks and records a fingerprint of each executed cell's source (cell metadata `source_sha`); a cell
edited since then, or never executed, is stale. Fix either failure with `make notebooks NB="nbs/X.ipynb"`.
"""
import ast, json, re, sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import run_notebooks as rn  # noqa: E402

LESSONS = [p for p in rn.notebooks([]) if p.name != "index.ipynb"]
# Lessons about what a model does: each shows the real default model in at least one `slow` cell with saved output.
MODEL_LESSONS = ("00_data", "01_model", "02_train", "02c_generate", "02d_decoding", "03_evaluate", "03a_compare",
                 "03b_probe", "03c_replay", "04_deploy", "05_cli")
DISPLAY_CALLS = {"print", "display", "show", "plot", "imshow", "hist", "bar", "barh", "scatter", "show_doc", "pprint",
                 "Markdown", "HTML", "print_trainable_parameters"}
QUIET = {"export", "exports", "exporti", "hide", "cuda"}  # not shown, or not run here
_tm = TransformerManager()


def _name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _is_test(node) -> bool:
    "An assertion: `assert ...` or a call of a `test_*` function (fastcore's test_eq, test_fail, ...)."
    if isinstance(node, ast.Assert): return True
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and _name(node.value).startswith(("test_", "assert")))


def _display_calls(tree: ast.Module):
    "Calls of display functions that run when the cell runs (not those inside a def, class or lambda)."
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)): continue
        if isinstance(node, ast.Call) and _name(node) in DISPLAY_CALLS: yield _name(node)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and _name(node.value).startswith("plot_"):
            yield _name(node.value)  # a figure not kept in a variable is there to be seen, `;` or not
        todo.extend(ast.iter_child_nodes(node))


def displays(source: str) -> str | None:
    """Why a code cell shows something when it runs (None when it shows nothing).

    A cell displays when its last statement is an expression (Jupyter shows its value) that is not an assertion
    and not silenced by a trailing `;`, or when it calls print/display/a plot function (`plot_*` included) outside a
    definition.
    Exported, hidden and GPU-only cells, and `eval: false` cells, are not required to show anything here."""
    d = rn.directives(source)
    if (d.keys() & QUIET or d.get("eval:", [""])[0].lower() == "false"
            or d.get("output:", [""])[0].lower() == "false"): return None
    body = "\n".join(l for l in source.splitlines() if not l.strip().startswith("#|"))
    try: tree = ast.parse(_tm.transform_cell(body))
    except SyntaxError: return None  # nbdev_test reports it
    if not tree.body: return None
    last, code = tree.body[-1], [l.split("#")[0].rstrip() for l in body.splitlines() if l.split("#")[0].strip()]
    if isinstance(last, ast.Expr) and not _is_test(last) and not code[-1].endswith(";"):
        return "its last line is an expression"
    called = next(_display_calls(tree), None)
    return f"it calls {called}()" if called else None


def _where(path: Path, i: int, cell) -> str:
    lines = [l.strip() for l in cell.source.splitlines() if l.strip()]
    first = next((l for l in lines if not l.startswith("#|")), lines[0] if lines else "")
    return (f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}, cell {i} "
            f"(id {cell.get('id', '?')}, `{first[:60]}`)")


def problems(path: Path, nb=None) -> list[str]:
    "Every missing or stale output of one notebook, one line each naming the notebook and the cell."
    nb = nb or nbformat.read(path, as_version=4)
    skip, found = rn.skip_flags(), []
    if not any(rn.FINGERPRINT_KEY in c.metadata for c in nb.cells if c.cell_type == "code"):
        return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}: "
                "never executed by `make notebooks`"]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code": continue
        saved = cell.metadata.get(rn.FINGERPRINT_KEY)
        if rn.runs_here(cell, skip):
            if saved is None: found.append(f"{_where(path, i, cell)}: never executed by `make notebooks`")
            elif saved != rn.fingerprint(cell.source):
                found.append(f"{_where(path, i, cell)}: changed since its outputs were saved")
        elif saved is not None and saved != rn.fingerprint(cell.source):
            found.append(f"{_where(path, i, cell)}: changed since its outputs were saved "
                         "(it runs only on a GPU: rerun it there or clear its outputs)")
        why = displays(cell.source)
        if why and not cell.get("outputs"):
            hint = " (end it with `;` if it is meant to show nothing)" if why.startswith("its last line") else ""
            found.append(f"{_where(path, i, cell)}: no saved output, but {why}{hint}")
    return found


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_outputs_saved_and_current(path):
    found = problems(path)
    assert not found, (f"{len(found)} missing or stale outputs; run `make notebooks NB=\"{path.relative_to(ROOT)}\"`:\n"
                       + "\n".join(found))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_shows_results(path):
    "A lesson shows something: the rule above cannot be met by a notebook with no displaying cells at all."
    nb = nbformat.read(path, as_version=4)
    shown = [c for c in nb.cells if c.cell_type == "code" and displays(c.source) and c.get("outputs")]
    assert shown, f"{path.relative_to(ROOT)}: no cell displays a saved result"
    if path.stem in MODEL_LESSONS or "serve" in path.stem or path.parent.name == "tutorials":
        real = [c for c in nb.cells if c.cell_type == "code" and "slow" in rn.directives(c.source) and c.get("outputs")]
        assert real, f"{path.relative_to(ROOT)}: no `#| slow` cell (the real default model) with saved output"


# The rule itself, on a small notebook executed for real by tools/run_notebooks.py.
CELLS = ["#| hide\nimport sys",
         "#| export\ndef double(x): return 2 * x",
         "import tempfile\nfrom pathlib import Path\nfrom fastcore.test import test_eq",
         "d = Path(tempfile.mkdtemp())\nprint(d / 'model', object())",
         "double(21)",
         "test_eq(double(2), 4)",
         "x = double(1);",
         "for i in range(2): print(i)",
         "#| cuda\nprint('needs a GPU')",
         "#| eval: false\nraise SystemExit('never run')",
         "#| cuda\nprint('edited since its GPU run')"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    path = tmp_path_factory.mktemp("nb") / "t.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T")]
                                  + [nbformat.v4.new_code_cell(s) for s in CELLS],
                                  metadata={"kernelspec": {"display_name": "python3", "language": "python",
                                                           "name": "python3"}})
    nb.cells[9].outputs = [nbformat.v4.new_output("stream", text="needs a GPU\n")]  # made on a GPU earlier
    nb.cells[11].outputs, nb.cells[11].metadata[rn.FINGERPRINT_KEY] = (
        [nbformat.v4.new_output("stream", text="old\n")], "0" * 16)
    nbformat.write(nb, path)
    rn.os.environ.update(rn.KERNEL_ENV)
    test_ran = rn.execute(path, timeout=120, skip=rn.skip_flags())
    rn.clean([path])
    return path, test_ran


def test_scrub_rules():
    rules = rn._path_rules(ROOT / "nbs")
    for raw, clean in [(f"{ROOT}/nbs/outputs/run", "outputs/run"), (f"{ROOT}/configs/a.yaml", "../configs/a.yaml"),
                       # /tmp paths scrub anyway
                       *([(f"{ROOT}2/x", f"{ROOT}2/x")] if not str(ROOT).startswith("/tmp/") else []),
                       ("/tmp/tmpab12_cd/model/config.json", "<tmp>/model/config.json"),
                       ("<Foo object at 0x7f3a2b1c0d90>", "<Foo object>"), ("id 0x7f3a2b1c0d90", "id 0x…"),
                       ("0xff", "0xff"), ("saved 2026-11-28 09:26:11.123", "saved <timestamp>"),
                       (f"{Path.home()}/.cache/x", "~/.cache/x"),
                       ("[25/27 03:32 < 00:18, 0.11 it/s, Epoch 2/3]", "[25/27, Epoch 2/3]"),
                       ("[27/27 03:50, Epoch 3/3]", "[27/27, Epoch 3/3]")]:
        assert rn.scrub_text(raw, rules) == clean, raw


def test_rule_classifies_cells():
    assert displays("x = 1\nx") and displays("print(1)\ny = 2") and displays("for i in range(2): print(i)")
    assert displays("!ls") and displays("%time f()") and displays("f(x)")  # a call's value is shown
    # a figure is shown whatever the `;`
    assert displays("plot_losses(history);") and not displays("fig = plot_comparison(c)")
    for quiet in ("x = 1", "import os", "def f(): print(1)", "test_eq(1, 1)", "assert x", "f(x);", "#| export\nx",
                  "#| hide\nx", "#| eval: false\nx", "#| cuda\nprint(1)", "class A:\n    def f(self): display(1)"):
        assert not displays(quiet), quiet


def test_fresh_notebook_passes(executed):
    path, (ran, kept) = executed
    assert (ran, kept) == (8, 3)  # the GPU-only and eval-false cells are kept as they were
    assert problems(path) == []
    nb = nbformat.read(path, as_version=4)
    printed = "".join(nb.cells[4].outputs[0]["text"])
    assert printed.startswith("<tmp>/model <object") and str(path.parent.parent) not in printed, printed
    assert nb.cells[9].outputs[0]["text"] == "needs a GPU\n" and not nb.cells[10].get("outputs")
    # a GPU cell edited since its run: stale outputs dropped
    assert nb.cells[11].outputs == [] and not nb.cells[11].metadata
    assert json.loads(path.read_text())["cells"][5]["execution_count"] is None


def test_edited_cell_is_stale(executed):
    nb = nbformat.read(executed[0], as_version=4)
    nb.cells[5].source = "double(22)"
    assert problems(executed[0], nb) == [
        f"t.ipynb, cell 5 (id {nb.cells[5].id}, `double(22)`): changed since its outputs were saved"]


def test_new_cell_is_stale(executed):
    nb = nbformat.read(executed[0], as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("y = 3"))
    assert len(problems(executed[0], nb)) == 1 and "never executed" in problems(executed[0], nb)[0]


def test_missing_output_fails(executed):
    nb = nbformat.read(executed[0], as_version=4)
    nb.cells[8].outputs = []
    found = problems(executed[0], nb)
    assert len(found) == 1 and "cell 8" in found[0] and "no saved output, but it calls print()" in found[0], found


def test_gpu_cell_edited_is_stale(executed):
    nb = nbformat.read(executed[0], as_version=4)
    nb.cells[9].metadata[rn.FINGERPRINT_KEY] = rn.fingerprint(nb.cells[9].source)  # as a GPU run records it
    assert problems(executed[0], nb) == []
    nb.cells[9].source += "\nprint(2)"
    assert "runs only on a GPU" in problems(executed[0], nb)[0]


# Saved outputs are part of the page: a reader should not wade through warnings, the Trainer's raw log dictionaries,
# progress-bar residue or tracebacks, nor see one figure twice. A cell that shows one of these on purpose says so with
# `#| noise: expected` (for example a lesson about a warning).
NOISE = [("a warning", re.compile(r"\b\w*Warning: ")),
         ("a raw training log dictionary", re.compile(r"^\{'(?:loss|eval_loss|train_runtime|grad_norm)': ", re.M)),
         ("progress-bar residue", re.compile(r"\d+%\|[^|\n]*\||\d(?:it/s|s/it)\]")),
         ("a traceback", re.compile(r"Traceback \(most recent call last\)"))]


def _printed(output) -> str:
    "The text of an output as a reader sees it: streams, displayed text, and an error's traceback."
    if output.get("output_type") == "stream": return "".join(output.get("text", ""))
    if output.get("output_type") == "error": return "Traceback (most recent call last)\n" + output.get("ename", "")
    return ""  # a returned value (a metrics dict, a table) is a result, not noise


def noise(path: Path, nb=None) -> list[str]:
    "Every noisy saved output of one notebook, one line each naming the cell and what is wrong."
    nb, found, images = nb or nbformat.read(path, as_version=4), [], {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code": continue
        expected = rn.directives(cell.source).get("noise:", [""])[0] == "expected"
        for out in cell.get("outputs", []):
            text = _printed(out)
            for what, pattern in NOISE:
                if not expected and pattern.search(text):
                    found.append(f"{_where(path, i, cell)}: shows {what}: {pattern.search(text).group(0).strip()!r}")
            png = out.get("data", {}).get("image/png")
            if png and not expected:
                if png in images: found.append(f"{_where(path, i, cell)}: repeats the figure of cell {images[png]}")
                images.setdefault(png, i)
    return found


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_outputs_have_no_noise(path):
    found = noise(path)
    assert not found, (f"{len(found)} noisy outputs (fix the cause, or mark a deliberate one `#| noise: expected`):\n"
                       + "\n".join(found))


def test_noise_rule_catches_each_kind():
    def nb_of(*outputs, source="f()"):
        cell = nbformat.v4.new_code_cell(source)
        cell.outputs = list(outputs)
        return nbformat.v4.new_notebook(cells=[cell])
    stream = lambda name, text: nbformat.v4.new_output("stream", name=name, text=text)  # noqa: E731
    png = lambda: nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})  # noqa: E731
    path = ROOT / "nbs" / "x.ipynb"
    for out in (stream("stderr", "/x/y.py:3: FutureWarning: `a` is deprecated\n"),
                stream("stdout", "{'loss': '3.9', 'grad_norm': '10.7', 'epoch': '0.2'}\n"),
                stream("stderr", "generating: 100%|██████████| 1/1 [00:00<00:00, 78.65it/s]\n"),
                nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])):
        assert len(noise(path, nb_of(out))) == 1, out
        assert noise(path, nb_of(out, source="#| noise: expected\nf()")) == []
    assert noise(path, nb_of(stream("stdout", "eval_loss 3.9, no warnings here\n"),
                             nbformat.v4.new_output("execute_result", data={"text/plain": "{'loss': 3.9}"}))) == []
    twice = nb_of(png())
    twice.cells.append(nbformat.v4.new_code_cell("g()"))
    twice.cells[1].outputs = [png()]
    assert ["repeats the figure of cell 0" in f for f in noise(path, twice)] == [True]
