#!/usr/bin/env python3
"""
Torture the ring fields the back-end shares with a concurrent driver.

Stores (device to driver): a driver in another process polls a 16-bit
field in shared memory while the back-end's store writes it.

The writer (this process) counts the field through 1..65535 (never 0),
with the back-end's ``virtq.store16`` or, as the negative control, with
``struct.pack_into`` (which zero-fills before it writes).  The reader, a
small C program built here with gcc and pinned to the other CPU, reads the
field as fast as it can and counts values that were never written (0) and
values that go backwards.  With a single store both must be 0.

Answers (device to driver and back): the driver in another process waits
for each value the device stores with an odd high byte (the byte that holds
a packed descriptor's USED bit) and at once stores the next even one, as
DPDK's virtio-user re-posts a packed descriptor the moment it reads it
used.  The device then waits for that answer; if it never comes, the
device's own store overwrote it (a store done as two, such as glibc's
variable-length memcpy: last byte, then the word) and the answer was lost.
Controls: a 2-byte slice assignment (the previous ``store16``) and
``struct.pack_into``.

Loads (driver to device): a driver in another process publishes packed
descriptors over and over, generation ``g`` writing id ``g`` and then flags
``g``; the back-end's ``virtq.load_packed_desc`` reads them.  Reading flags
``g`` with an id older than ``g`` is a stale descriptor taken as fresh.
The negative control reads all 16 bytes in one unpack (the old code).

    .venv/bin/python scripts/torture_store.py [--reads 100000000]
"""

import argparse
import contextlib
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from avocado_vhost.vhost_user.virtq import (  # noqa: E402
    load_packed_desc, store16)

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
WRITER = r"""
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    int fd = atoi(argv[1]);
    void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    volatile uint64_t *addr = m, *seq = (volatile uint64_t *)m + 4;
    volatile uint16_t *id = (volatile uint16_t *)m + 6;
    volatile uint16_t *flags = (volatile uint16_t *)m + 7;
    volatile uint8_t *b = m;
    uint64_t g = 0;
    b[64] = 1;                      /* tell the reader we started */
    while (!b[66]) {                /* until the reader is done */
        g++;
        *addr = g;                  /* the descriptor ... */
        *id = (uint16_t)g;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        *flags = (uint16_t)g;       /* ... then the flags that publish it */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        *seq = g;                   /* ... then how far it got */
    }
    return 0;
}
"""
ANSWERER = r"""
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    int fd = atoi(argv[1]);
    void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    volatile uint16_t *field = (volatile uint16_t *)m + 1;
    volatile uint8_t *b = m;
    b[64] = 1;
    while (!b[66]) {
        uint16_t v = *field;
        if (v & 0x100)                  /* odd high byte: answer at once */
            *field = (uint16_t)((v & 0xff00) + 0x100);
    }
    return 0;
}
"""
_U16 = struct.Struct("<H")
_DESC = struct.Struct("<QIHH")
_U64 = struct.Struct("<Q")


def slice_store(mem, offset, value):
    """The previous store16: a variable-length memcpy of 2 bytes."""
    mem[offset:offset + 2] = value.to_bytes(2, "little")


def old_load(mem, offset):
    """The negative control: one unpack, flags copied last."""
    addr, length, buf_id, flags = _DESC.unpack_from(mem, offset)
    return flags, addr, length, buf_id


def run_answers(store, rounds: int, answerer: str) -> tuple:
    """Store odd values and wait for the driver's even answers; count the
    answers that never came (overwritten by the device's own store)."""
    with _peer(answerer) as (mem, proc):
        lost, reads = _answers(mem, store, rounds)
        mem[66] = 1
        proc.wait(timeout=60)
    return rounds, reads, lost


def _answers(mem, store, rounds: int) -> tuple:
    load = _U16.unpack_from
    lost = reads = 0
    for n in range(rounds):
        # The signal is in the high byte (as the USED bit of packed flags),
        # which a split store writes first; the low byte varies too.
        high = (2 * n + 1) & 0xFF
        value = ((high + 1) & 0xFF) << 8      # the answer we expect
        store(mem, 2, high << 8 | (n * 37 + 1) & 0xFF)
        deadline = time.monotonic() + 0.05   # an answer takes microseconds
        spins = 0
        while load(mem, 2)[0] != value:
            spins += 1
            if not spins % 1000 and time.monotonic() > deadline:
                lost += 1
                store(mem, 2, value)       # resynchronise
                break
        reads += spins + 1
    return lost, reads


def run_loads(load, reads: int, writer: str) -> tuple:
    """Count stale descriptors: flags of generation G with an addr < G.

    G is known in full from the writer's 64-bit ``seq``, read before the
    descriptor: flags are at least ``seq``'s generation, so G is ``seq``
    plus the 16-bit distance to the flags.  A reader preempted for more
    than 65,536 generations underestimates G, which can hide a stale read
    but never invent one.
    """
    stale = 0
    seq_at = _U64.unpack_from
    with _peer(writer) as (mem, proc):
        for _ in range(reads):
            seq = seq_at(mem, 32)[0]
            flags, addr, _, _ = load(mem, 0)
            if addr < seq + ((flags - seq) & 0xFFFF):
                stale += 1
        mem[66] = 1
        proc.wait(timeout=60)
    return reads, stale


def run(store, reads: int, reader: str) -> tuple:
    value = 1
    with _peer(reader, str(reads), first=lambda m: store16(m, 2, 1),
               stdout=subprocess.PIPE, text=True) as (mem, proc):
        # The reader flags its end at byte 66; the writer spins (it is the
        # load) until then, or until the reader died.
        while not mem[66] and proc.poll() is None:
            value = value % 65535 + 1
            store(mem, 2, value)
        out, _ = proc.communicate(timeout=600)
    return tuple(int(x) for x in out.split())


@contextlib.contextmanager
def _peer(program: str, *args: str, first=None, **popen):
    """One C peer pinned to the other CPU, sharing a page with this
    process; yields (page, process) once the peer flagged its start at
    byte 64 (or died).  The peer is killed if the caller fails, and the
    page and its memfd are released whatever happens.

    :param first: called with the page before the peer starts.
    """
    fd = os.memfd_create("torture")
    os.ftruncate(fd, 4096)
    mem = mmap.mmap(fd, 4096)
    proc = None
    try:
        if first is not None:
            first(mem)
        proc = subprocess.Popen(["taskset", "-c", "1", program, str(fd),
                                 *args], pass_fds=[fd], **popen)
        while not mem[64] and proc.poll() is None:
            pass
        yield mem, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        mem.close()
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--reads", type=int, default=100_000_000)
    parser.add_argument("--rounds", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reader, writer, answerer = (build(tmp, name, text) for name, text in (
            ("reader", READER), ("writer", WRITER), ("answerer", ANSWERER)))
        stores = (("virtq.store16 (one 2-byte store)", store16),
                  ("2-byte slice (negative control)", slice_store),
                  ("struct.pack_into (negative control)",
                   lambda m, o, v: _U16.pack_into(m, o, v)))
        # the slice never reads as 0 (it writes the same bytes twice)
        for name, store in (stores[0], stores[2]):
            reads, zero, back = run(store, args.reads, reader)
            print(f"{name:38s} {reads:>12,d} reads: {zero:>10,d} torn "
                  f"(read as 0), {back:>10,d} backwards")
        for name, store in stores:
            rounds, reads, lost = run_answers(store, args.rounds, answerer)
            print(f"{name:38s} {rounds:>12,d} rounds: {lost:>10,d} answers "
                  f"overwritten ({reads:,d} reads)")
        for name, load in (
                ("virtq.load_packed_desc (flags first)", load_packed_desc),
                ("one 16-byte unpack (negative control)", old_load)):
            reads, stale = run_loads(load, args.reads, writer)
            print(f"{name:38s} {reads:>12,d} reads: {stale:>10,d} stale "
                  f"(flags newer than the descriptor)")
    return 0


def build(tmp: str, name: str, text: str) -> str:
    """Compile one of the C peers with gcc."""
    binary = os.path.join(tmp, name)
    with open(binary + ".c", "w", encoding="ascii") as out:
        out.write(text)
    subprocess.run(["gcc", "-O2", "-o", binary, binary + ".c"], check=True)
    return binary


if __name__ == "__main__":
    sys.exit(main())
