"""Generated files agree with their sources: README.md with nbs/index.ipynb, the package with the notebooks."""
import json, shutil, subprocess, sys
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
        assert exported.read_text() == path.read_text(), f"{path.relative_to(ROOT)} differs from its notebook: run `make export`"


def test_notebooks_are_clean():
    for nb in sorted((ROOT / "nbs").rglob("*.ipynb")):
        data = json.loads(nb.read_text(encoding="utf-8"))
        for cell in data["cells"]:
            assert cell.get("execution_count") is None, f"{nb.name}: run `nbdev_clean`"
            assert not cell.get("metadata"), f"{nb.name}: cell metadata left in; run `nbdev_clean`"
