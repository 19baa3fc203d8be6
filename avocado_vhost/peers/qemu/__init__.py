"""
QEMU as the suite drives it: finding and probing the binary (``binary``),
the VM described as data and launched with ``qemu.machine``
(``vm``, ``machine``, ``launcher``), the target's facts and guest RAM
layout (``platform``), qtest (``qtest``), and the test-side virtio-pci
driver with its queues (``virtio_pci``, ``driver``).
"""
