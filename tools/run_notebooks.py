"""Execute the notebooks and save their outputs in place, so a reader sees real results without running anything.

Every notebook (nbs/*.ipynb sorted, then nbs/tutorials/*.ipynb) runs in a fresh Jupyter kernel started in the
notebook's folder, as `nbdev_test` would run it, with `slow` cells included. Cells that `nbdev_test` never runs
here keep their old outputs: `#| eval: false`, `nbdev_export()` calls, and cells carrying any other test flag of
settings.ini (`#| cuda`: they need a GPU). Runs are made deterministic (seeds set before the first cell, hash seed,
no progress bars) and outputs are scrubbed of machine details (paths, memory addresses, timestamps). Each executed
code cell records a fingerprint of its source in its metadata (`source_sha`), so tests/test_notebook_outputs.py
can tell when a cell changed after the outputs were saved. Finally `nbdev_clean` tidies each notebook (it keeps
outputs and the fingerprint key, which settings.ini allows).

    python tools/run_notebooks.py                      # every notebook
    python tools/run_notebooks.py nbs/00_data.ipynb    # only these
"""
from __future__ import annotations
import argparse, configparser, hashlib, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FINGERPRINT_KEY = "source_sha"  # cell metadata key; listed in settings.ini `allowed_cell_metadata_keys`
SEED = 0

# Fixed before the kernel starts: hash order, no progress bars or download chatter, offline Hub (fails fast).
KERNEL_ENV = {"PYTHONHASHSEED": "0", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
              "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# Run silently in the kernel before the first cell; its outputs are not saved.
SETUP_CODE = f"""
import random as _r, numpy as _np
_r.seed({SEED}); _np.random.seed({SEED})
try:
    import torch as _t; _t.manual_seed({SEED})
    import transformers as _tf; _tf.set_seed({SEED})
except ImportError: pass
try:  # PNGs without the matplotlib version in their metadata, so they only change when the figure does
    get_ipython().run_line_magic("config", "InlineBackend.figure_formats = ['png']")
    get_ipython().run_line_magic("config", "InlineBackend.print_figure_kwargs = "
                                 "{{'bbox_inches': 'tight', 'metadata': {{'Software': None}}}}")
except Exception: pass
"""


def fingerprint(source: str | list) -> str:
    "Short sha256 of a cell's source: what `make notebooks` records and the output test recomputes."
    text = "".join(source) if isinstance(source, list) else source
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def directives(source: str | list) -> dict[str, list[str]]:
    "The `#| name args` lines that open a cell, as nbdev reads them: `{'eval:': ['false'], 'slow': []}`."
    text = "".join(source) if isinstance(source, list) else source
    found = {}
    for line in text.splitlines():
        s = line.strip()
        if not s: continue
        m = re.match(r"#\s*\|\s*(\S+)(.*)", s)
        if not m: break
        found[m.group(1)] = m.group(2).split()
    return found


def skip_flags() -> set[str]:
    "Test flags whose cells cannot run here: settings.ini `tst_flags` except `slow`."
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    return set(cfg["DEFAULT"].get("tst_flags", "").split()) - {"slow"}


def runs_here(cell, skip: set[str] | None = None) -> bool:
    "Whether `make notebooks` executes this cell (what `nbdev_test --flags slow` executes)."
    if cell["cell_type"] != "code": return False
    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    d = directives(src)
    if "nbdev_export(" in src or d.get("eval:", [""])[0].lower() == "false": return False
    return not (skip_flags() if skip is None else skip) & d.keys()


def notebooks(args: list[str]) -> list[Path]:
    "The notebooks named, or all of them in order: nbs/*.ipynb sorted, then nbs/tutorials/*.ipynb sorted."
    if args: return [Path(a).resolve() for a in args]
    return sorted((ROOT / "nbs").glob("*.ipynb")) + sorted((ROOT / "nbs" / "tutorials").glob("*.ipynb"))


def _path_rules(nb_dir: Path) -> list[tuple[re.Pattern, object]]:
    "Absolute machine paths and what they become, then memory addresses and timestamps."
    import site, sysconfig
    rel = os.path.relpath(ROOT, nb_dir)
    dirs = {str(nb_dir): ".", str(ROOT): rel, sys.prefix: "<python>", str(Path.home()): "~",
            **{sp: "<site-packages>" for sp in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}}}
    dirs.update({os.path.realpath(d): new for d, new in list(dirs.items())})
    # One pass, longest path first, so a replacement is never rewritten by a shorter rule; a path only matches
    # whole (`/work/main` must not match inside `/work/main2`).
    alternatives = "|".join(re.escape(d) for d in sorted(dirs, key=len, reverse=True))
    def sub(m):
        new = dirs[m.group(1)]
        if not m.group(2): return new
        return "" if new == "." else new + "/"  # a file in the notebook's folder is written as a plain name
    tmp = re.escape(tempfile.gettempdir().rstrip("/"))
    return [(re.compile(rf"({alternatives})(/|(?![\w.-]))"), sub),
            # `<object at 0x7f..>` -> `<object>`, as nbdev_clean does
            (re.compile(r"(<[^<>\n]*?) at 0x[0-9a-fA-F]+>"), r"\1>"),
            (re.compile(rf"(?:/private)?{tmp}/[^\s/'\"]+"), "<tmp>"),  # /tmp/tmpab12cd/x -> <tmp>/x
            (re.compile(r"\b0x[0-9a-fA-F]{9,16}\b"), "0x…"),  # memory addresses
            (re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"), "<timestamp>"),
            # the Trainer's notebook progress bar: `[25/27 03:32 < 00:18, 0.11 it/s, Epoch 2/3]` -> `[25/27, Epoch 2/3]`
            (re.compile(r"(\[\s*\d+/\d+) (?:: < :|\d[\d:]*(?: < \d[\d:]*)?(?:, (?:[\d.]+|\+inf) it/s)?)"), r"\1")]


def scrub_text(text: str, rules: list[tuple[re.Pattern, object]]) -> str:
    "Apply the scrubbing rules to one output text."
    for pat, new in rules: text = pat.sub(new, text)
    return text


def _scrub_value(v, rules):
    if isinstance(v, list): return [scrub_text(x, rules) for x in v]
    return scrub_text(v, rules)


def scrub_outputs(cell, rules):
    "Remove machine details from a cell's outputs (text, HTML, markdown, tracebacks), and execution counts."
    cell["execution_count"] = None
    for o in cell.get("outputs", []):
        if "execution_count" in o: o["execution_count"] = None
        if "text" in o: o["text"] = _scrub_value(o["text"], rules)
        if "traceback" in o: o["traceback"] = _scrub_value(o["traceback"], rules)
        for k, v in o.get("data", {}).items():
            if k.startswith("text/") and isinstance(v, (str, list)): o["data"][k] = _scrub_value(v, rules)
        o.get("metadata", {}).pop("execution", None)


def _first_line(source: str) -> str:
    return next((l for l in source.splitlines() if l.strip() and not l.startswith("#|")), "")[:70]


def execute(path: Path, timeout: int, skip: set[str], slow_cell: float = 10) -> tuple[int, int]:
    "Execute one notebook in place; returns (cells run, cells kept); raises with the failing cell on error."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False, record_timing=False,
                            coalesce_streams=True, resources={"metadata": {"path": str(path.parent)}})
    rules, deadline, ran, kept = _path_rules(path.parent), time.monotonic() + timeout, 0, 0
    with client.setup_kernel():
        nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP_CODE))  # run as cell 0, then removed: nothing of it is saved
        try: client.execute_cell(nb.cells[0], 0)
        finally: nb.cells.pop(0)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code": continue
            if not runs_here(cell, skip):
                old = cell.metadata.get(FINGERPRINT_KEY)
                if old and old != fingerprint(cell.source):  # edited since a GPU run made its outputs: they are stale
                    cell.outputs = []
                    del cell.metadata[FINGERPRINT_KEY]
                kept += 1
                continue
            client.timeout = max(1, int(deadline - time.monotonic()))  # what is left of the notebook's budget
            start = time.perf_counter()
            try: client.execute_cell(cell, i)
            except Exception as e:
                src = "\n".join(cell.source.splitlines()[:3])
                raise RuntimeError(f"{path.name}, cell {i} ({type(e).__name__}):\n{src}\n...\n{_tail(e)}") from None
            if (took := time.perf_counter() - start) >= slow_cell:
                print(f"  cell {i}: {took:.0f} s  {_first_line(cell.source)}", flush=True)
            scrub_outputs(cell, rules)
            cell.metadata[FINGERPRINT_KEY] = fingerprint(cell.source)
            ran += 1
    nbformat.write(nb, path)
    return ran, kept


def _tail(e: Exception, lines: int = 15) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the kernel colours its tracebacks
    return "\n".join(text.strip().splitlines()[-lines:])


def clean(paths: list[Path]):
    "`nbdev_clean` each notebook with the project's settings (it keeps outputs)."
    exe = shutil.which("nbdev_clean", path=str(Path(sys.executable).parent)) or "nbdev_clean"
    for p in paths: subprocess.run([exe, "--fname", str(p)], cwd=ROOT, check=True)


def _show(p: Path) -> str: return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to execute (default: all, in order)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per notebook")
    ap.add_argument("--slow-cell", type=float, default=10, help="print the cells that take at least this many seconds")
    args = ap.parse_args(argv)
    os.environ.update(KERNEL_ENV)
    paths, skip, failed, total = notebooks(args.notebooks), skip_flags(), [], time.perf_counter()
    for p in paths:
        start = time.perf_counter()
        print(f"{_show(p)} ...", flush=True)
        try: ran, kept = execute(p, args.timeout, skip, args.slow_cell)
        except Exception as e:
            failed.append(p)
            print(f"FAILED {_show(p)} after {time.perf_counter() - start:.0f} s: {e}", file=sys.stderr, flush=True)
            continue
        clean([p])
        print(f"{_show(p)}: {time.perf_counter() - start:.0f} s ({ran} cells run, {kept} kept as they were)",
              flush=True)
    print(f"total: {time.perf_counter() - total:.0f} s for {len(paths)} notebooks"
          + (f", {len(failed)} failed (left unchanged): " + ", ".join(_show(p) for p in failed) if failed else ""),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
