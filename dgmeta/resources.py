"""What the machine can hold: sizes that can only end in an out-of-memory kill are refused up front.

The bound is deliberately loose: it counts only the float32 input batch of one training step and
one copy of it (the augmented images), :data:`INPUT_BYTES_PER_PIXEL` bytes per pixel of every image
in the step, and compares it with the machine's memory (or the container's limit). Activations
come on top of that, so anything refused here could not have run; anything the benchmarks run
(224 px, 32 images per domain) needs a few hundred MiB by this count.
"""

from __future__ import annotations

import os
from pathlib import Path

from dgmeta.errors import ConfigError

INPUT_BYTES_PER_PIXEL = 16  # float32 input (3 channels, 12 bytes) + part of its augmented copy


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup limit when one is set lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def step_input_bytes(image_size: int, images_per_step: int) -> int:
    return INPUT_BYTES_PER_PIXEL * image_size * image_size * images_per_step


def check_step_memory(image_size: int, batch_size: int, images_per_step: int, memory: int | None = None) -> None:
    """Refuse ``--image-size``/``--batch-size`` whose input batch alone exceeds the machine's memory."""
    memory = machine_memory_bytes() if memory is None else memory
    need = step_input_bytes(image_size, images_per_step)
    if need > memory:
        raise ConfigError(
            f"--image-size {image_size} with --batch-size {batch_size} ({images_per_step} images a step) needs at least "
            f"{_gib(need)} of memory for the input batch alone; this machine has {_gib(memory)}",
            "use a smaller --image-size or --batch-size (the benchmarks run 224 px and 32 images per domain)",
        )


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"
