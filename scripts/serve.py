"""Start Sparsity Lab: begin loading the default model, then run `streamlit run app.py` in this process.

    .venv/bin/python scripts/serve.py [streamlit options, e.g. --server.port 8502]
"""
import os
import sys
from pathlib import Path

# Before the preload thread imports torch (app.py sets the same, but runs after it): OpenMP workers
# waiting at a barrier sleep instead of spinning (README "Speed note").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ui import preload  # noqa: PLC0415

    # First: the model loads while Streamlit is imported and starts; after the first page the server
    # warms the others in the background (ui/preload.py).
    preload.start("minilm", warm_up=True)

    from streamlit.web import cli  # noqa: PLC0415

    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":  # not in a process a study's pool spawns, which re-runs the main module
    main()
