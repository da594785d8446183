"""A DomainNet-layout dataset of any size whose lists point to a small pool of tiny image files.

Real DomainNet has 586k images; what matters for memory is how many *entries* the lists hold,
not how many distinct files there are, so each list names a pool of ``pool_per_class`` files
per class over and over (``entries`` lines in every ``<domain>_train.txt``, a tenth of that in
``<domain>_test.txt``). Used by tests/test_streaming.py and benchmarks/memory/run_memory.py.

    python benchmarks/tools/domainnet_layout.py /tmp/dn --entries 100000
    dgmeta run domainnet --data-root /tmp/dn --cache stream ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

DOMAINS = ("clipart", "painting", "sketch")
CLASSES = ("aircraft_carrier", "airplane", "alarm_clock", "ambulance")


def make_domainnet_layout(
    data_root: Path,
    entries: int,
    domains: Sequence[str] = DOMAINS,
    classes: Sequence[str] = CLASSES,
    pool_per_class: int = 3,
    image_size: int = 20,
    seed: int = 0,
    test_entries: int | None = None,
) -> Path:
    """``<data_root>/DomainNet/<domain>/<class>/*.jpg`` and lists of ``entries`` train lines per
    domain (and ``test_entries``, default a tenth of that, test lines)."""
    rng = np.random.default_rng(seed)
    root = Path(data_root) / "DomainNet"
    for d_index, domain in enumerate(domains):
        pool = []
        for label, name in enumerate(classes):
            folder = root / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(pool_per_class):
                pixels = np.full((image_size, image_size, 3), 40 + 50 * label, dtype=np.uint8)
                pixels = np.clip(pixels + rng.integers(0, 30 + 20 * d_index, pixels.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.jpg", quality=90)
                pool.append(f"{domain}/{name}/{name}_{i:03d}.jpg {label}\n")
        train = [pool[i % len(pool)] for i in range(entries)]
        test = [pool[i % len(pool)] for i in range(max(len(pool), entries // 10 if test_entries is None else test_entries))]
        (root / f"{domain}_train.txt").write_text("".join(train))
        (root / f"{domain}_test.txt").write_text("".join(test))
    return Path(data_root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--entries", type=int, default=100_000, help="train-list lines per domain")
    parser.add_argument("--test-entries", type=int, default=None, help="test-list lines per domain [entries / 10]")
    args = parser.parse_args()
    make_domainnet_layout(args.data_root, args.entries, test_entries=args.test_entries)
    print(f"DomainNet layout with {args.entries:,} train entries per domain in {args.data_root}/DomainNet")


if __name__ == "__main__":
    main()
