"""
What the tests run against or beside, each driven from the test process:
QEMU (:mod:`.qemu`: the binary's probe, launching, QMP, qtest, the
test-side virtio driver), the real Linux guest (:mod:`.guest`), DPDK's
testpmd (:mod:`.dpdk`) and external vhost-user back-ends
(:mod:`.external`: the conformance kit's catalogue and launcher).
"""
