"""Start-up against the QEMU under test: negotiation, memory table, rings."""

from avocado_vhost.test import VhostUserTest, main
from avocado_vhost.vhost_user import BackendConfig, Request, VirtioFeature


class StartUp(VhostUserTest):
    """
    :avocado: enable
    :avocado: tags=arch:x86_64,arch:aarch64,vhost-user,smoke
    """

    def test_startup_sequence(self):
        """QEMU negotiates, sends its memory table (SET_MEM_TABLE, or an
        ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS) and starts both
        rings, and breaks no rule of the spec while doing so.

        :avocado: tags=quick
        """
        backend = self.make_backend("backend")
        vm = self.make_vm("vm", backend.listener_path)
        self.start_vm(vm, backend, rings=2)
        received = backend.trace.received()
        self.log.info("start-up sequence: %s",
                      " ".join(r.name for r in received))
        memory = backend.state.memory_request
        for request in (Request.GET_FEATURES, Request.SET_OWNER,
                        Request.SET_FEATURES, memory,
                        Request.SET_VRING_NUM, Request.SET_VRING_ADDR,
                        Request.SET_VRING_BASE, Request.SET_VRING_KICK,
                        Request.SET_VRING_CALL):
            self.assertIn(request, received)
        # Memory before rings: a ring address is only meaningful once the
        # table that translates it has arrived.
        self.assertLess(received.index(memory),
                        received.index(Request.SET_VRING_ADDR))
        self.assertEqual(backend.state.started_rings(), [0, 1])
        self.assertGreater(len(backend.state.memory), 0)

    def test_backend_without_protocol_features(self):
        """A back-end that does not offer VHOST_USER_F_PROTOCOL_FEATURES is
        legal: "the ring starts directly in the enabled state".  QEMU must
        start its rings.

        :avocado: tags=quick
        """
        config = BackendConfig()
        config.features &= ~int(VirtioFeature.PROTOCOL_FEATURES)
        # built by hand: the run's offer (-p offer=) changes only what
        # goes into the protocol features, which this back-end has none of
        backend = self.make_backend("backend", config)
        vm = self.make_vm("vm", backend.listener_path)
        vm.launch()
        vm.drive_device(queues=2)
        # QEMU starts vhost within the guest's DRIVER_OK write, which has
        # returned: it started the rings, or it said why not.
        said = vm.log_text()
        if "unable to start vhost net" in said:
            self.fail(f"QEMU could not start a back-end without protocol "
                      f"features: {said.strip()}")
        backend.wait_rings_started(2, timeout=self.scaled(10))

    def test_firmware(self):
        """Realism check: SeaBIOS and iPXE, not the test, drive the NIC.

        :avocado: tags=firmware
        """
        self.require_arch("x86_64")  # SeaBIOS and iPXE are PC firmware
        backend = self.make_backend("backend")
        # Firmware needs a running CPU: the qtest accelerator has none.
        accel = "tcg" if self.accel == "qtest" else self.accel
        vm = self.make_vm("vm", backend.listener_path, firmware=True,
                          accel=accel)
        try:
            vm.launch()
        except Exception:
            with open(vm.log_path, encoding="utf-8", errors="replace") as log:
                said = log.read().strip()
            if "could not load PC BIOS" in said:  # a build without blobs
                self.cancel(f"the QEMU under test finds no SeaBIOS: {said}")
            raise
        # iPXE probes the NIC about 2 s after launch under TCG.
        backend.wait_rings_started(2, timeout=self.scaled(60))
        self.assertIn(backend.state.memory_request,
                      backend.trace.received())


if __name__ == "__main__":
    main()
