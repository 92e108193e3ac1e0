"""Running the notebooks in tests: a kernelspec for this interpreter in a
temporary Jupyter path, so that they run in a fresh clone with only .venv."""
import json
import sys


def jupyter_kernel(tmp_path, monkeypatch) -> str:
    name = "chronolens-test"
    d = tmp_path / "jupyter" / "kernels" / name
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "chronolens (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name
