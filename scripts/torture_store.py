#!/usr/bin/env python3
"""
Torture the back-end's ring publication: a driver in another process polls
a 16-bit field in shared memory while the back-end's store writes it.

The writer (this process) counts the field through 1..65535 (never 0),
with the back-end's ``virtq.store16`` or, as the negative control, with
``struct.pack_into`` (which zero-fills before it writes).  The reader, a
small C program built here with gcc and pinned to the other CPU, reads the
field as fast as it can and counts values that were never written (0) and
values that go backwards.  With a single store both must be 0.

    .venv/bin/python scripts/torture_store.py [--reads 100000000]
"""

import argparse
import mmap
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from avocado_vhost.vhost_user.virtq import store16  # noqa: E402

READER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    int fd = atoi(argv[1]); long reads = atol(argv[2]);
    volatile uint16_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                MAP_SHARED, fd, 0);
    long zero = 0, back = 0, n;
    uint16_t last = p[1];
    p[32] = 1;                      /* tell the writer we started */
    for (n = 0; n < reads; n++) {
        uint16_t v = p[1];
        if (v == 0) { zero++; continue; }
        if ((uint16_t)(v - last) > 0x8000) back++;
        last = v;
    }
    p[33] = 1;                      /* tell the writer we are done */
    printf("%ld %ld %ld\n", n, zero, back);
    return 0;
}
"""
_U16 = struct.Struct("<H")


def run(store, reads: int, reader: str) -> tuple:
    fd = os.memfd_create("torture")
    os.ftruncate(fd, 4096)
    mem = mmap.mmap(fd, 4096)
    store16(mem, 2, 1)
    proc = subprocess.Popen(["taskset", "-c", "1", reader, str(fd),
                             str(reads)], pass_fds=[fd],
                            stdout=subprocess.PIPE, text=True)
    value = 1
    # The reader flags its start at byte 64 and its end at byte 66; the
    # writer spins (it is the load) until then, or until the reader died.
    while not mem[64] and proc.poll() is None:
        pass
    while not mem[66] and proc.poll() is None:
        value = value % 65535 + 1
        store(mem, 2, value)
    out, _ = proc.communicate(timeout=600)
    mem.close()
    os.close(fd)
    return tuple(int(x) for x in out.split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--reads", type=int, default=100_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reader = os.path.join(tmp, "reader")
        src = reader + ".c"
        with open(src, "w", encoding="ascii") as out:
            out.write(READER)
        subprocess.run(["gcc", "-O2", "-o", reader, src], check=True)
        for name, store in (
                ("virtq.store16 (one 2-byte store)", store16),
                ("struct.pack_into (negative control)",
                 lambda m, o, v: _U16.pack_into(m, o, v))):
            reads, zero, back = run(store, args.reads, reader)
            print(f"{name:38s} {reads:>12,d} reads: {zero:>10,d} torn "
                  f"(read as 0), {back:>10,d} backwards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
