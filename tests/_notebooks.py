"""Running the notebooks in tests: a kernelspec for this interpreter in a
temporary Jupyter path, so that they run in a fresh clone with only .venv."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def jupyter_kernel(tmp_path, monkeypatch) -> str:
    name = "chronolens-test"
    d = tmp_path / "jupyter" / "kernels" / name
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "chronolens (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


def run_notebook(name: str, env: dict, tmp_path, monkeypatch) -> tuple[list, int, str]:
    """Execute notebooks/<name> from the repository root with the environment
    variables env set. -> (outputs of every code cell, the number of PNG
    images among them, all their text joined)."""
    import nbformat
    from nbclient import NotebookClient

    for k, v in {**env, "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(k, str(v))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, kernel_name=jupyter_kernel(tmp_path, monkeypatch), timeout=300,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    return outputs, images, "".join(o.get("text", "") for o in outputs)
