"""Large CPU outputs and gradients ask Linux for transparent huge pages (csrc/common/cpu_memory.h), except on a
virtual machine whose guest hands its free 2 MB blocks back to the host, where a fresh huge page costs more than it
saves."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import segops

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def host_takes_back_free_huge_pages():
    """A virtio balloon with free page reporting (feature bit 5) at an order of at most 9 (2 MB of 4 KB pages)."""
    try:
        order = int(Path("/sys/module/page_reporting/parameters/page_reporting_order").read_text())
    except (OSError, ValueError):
        return False
    if order > 9:
        return False
    balloons = Path("/sys/bus/virtio/drivers/virtio_balloon")
    devices = sorted(balloons.glob("virtio*")) if balloons.is_dir() else []
    return any((device / "features").read_text().strip()[5:6] == "1" for device in devices)


def test_huge_pages_are_advised_on_linux_unless_the_host_takes_free_ones_back():
    expected = sys.platform.startswith("linux") and not host_takes_back_free_huge_pages()
    assert torch.ops.segops._huge_pages_advised() == expected


def huge_kb_of_mapping(address):
    """AnonHugePages (kB) of the mapping of this process that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header: "start-end perms offset dev inode ..."
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "AnonHugePages:":
            return int(fields[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(
    not THP_MODE.exists() or "[madvise]" not in THP_MODE.read_text(), reason="needs THP in madvise mode (Linux)"
)
def test_a_large_output_has_huge_pages_only_where_advised():
    pooled, indices = F.max_pool2d(torch.randn(1, 16, 512, 512), 2, return_indices=True)
    out = segops.max_unpool2d(pooled, indices, 2)  # 16 MB: fresh memory from the system, whole 2 MB pages inside
    huge_kb = huge_kb_of_mapping(out.data_ptr())
    if torch.ops.segops._huge_pages_advised():
        assert huge_kb > 0
    else:
        assert huge_kb == 0
