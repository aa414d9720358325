"""memory.keep_freed_memory (the server's malloc settings): large temporaries reuse freed heap memory."""
import os
import subprocess
import sys

import pytest

from sparsesight import memory

WORKLOAD = """
import resource, numpy as np
from sparsesight.memory import keep_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = faults()
for _ in range(20):  # the allocate/free pattern of a forward pass: temporaries of 16-32 MiB
    x = np.ones(3 * 2**20)
    y = np.ones(2 * 2**20)
    del x
    z = np.ones(4 * 2**20)
    del y, z
print(bool(applied), faults() - a)
"""


def _faults(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", WORKLOAD], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(memory._glibc() is None, reason="glibc malloc only")
def test_freed_memory_is_reused_instead_of_page_faulted_again():
    applied, kept = _faults()
    opted_out, system = _faults(SPARSESIGHT_MALLOC="system")
    assert (applied, opted_out) == ("True", "False")
    assert kept < 0.5 * system, (kept, system)
