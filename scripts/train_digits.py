"""Retrain the shipped digits models from their default configs and write sparsekit/models/bundled/.

    python scripts/train_digits.py            # all three (about 15 s on 2 idle cores)
    python scripts/train_digits.py vit        # one of them

Run it after changing an architecture or a default training config (and bump digits.VERSION):
the loader ignores bundled files whose recorded config or version no longer match.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from sparsekit.models.digits import ARCHITECTURES, _metadata, write_bundled  # noqa: E402

for arch in sys.argv[1:] or ARCHITECTURES:
    if arch not in ARCHITECTURES:
        sys.exit(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    path = write_bundled(arch)
    meta = _metadata(path.read_bytes())
    print(f"{path}: held-out accuracy {float(meta['accuracy']):.2f}% (trained in {meta['train_seconds']} s, "
          f"{path.stat().st_size / 1024:.0f} KB, torch {meta['torch']})")
