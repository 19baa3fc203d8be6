"""Per-target facts: halting firmware images and guest addresses."""

import struct
import tempfile
import unittest

from avocado_vhost.peers.qemu.platform import PLATFORMS, platform_for


class PlatformTest(unittest.TestCase):

    def firmware(self, arch):
        with tempfile.TemporaryDirectory() as tmp:
            with open(PLATFORMS[arch].halting_firmware(tmp), "rb") as image:
                return image.read()

    def test_x86_reset_vector_halts(self):
        image = self.firmware("x86_64")
        self.assertEqual(len(image), 0x10000)
        self.assertEqual(image[0xFFF0:0xFFF3], b"\xf4\xeb\xfd")  # hlt; jmp

    def test_aarch64_first_instruction_waits_forever(self):
        wfi, branch = struct.unpack("<II", self.firmware("aarch64")[:8])
        self.assertEqual(wfi, 0xD503207F)
        self.assertEqual(branch, 0x17FFFFFF)  # b . - 4: back to the wfi

    def test_guest_addresses_follow_the_ram_base(self):
        self.assertEqual(platform_for("x86_64").ram(0x1000), 0x1000)
        self.assertEqual(platform_for("aarch64").ram(0x1000), 0x40001000)
        self.assertEqual(platform_for("aarch64").window((1, 2)),
                         (0x40000001, 0x40000002))

    def test_unknown_target(self):
        with self.assertRaisesRegex(ValueError, "riscv64"):
            platform_for("riscv64")

    def test_machine_arguments(self):
        self.assertEqual(platform_for("aarch64").machine_args("mem0"),
                         ["-machine", "virt,memory-backend=mem0",
                          "-cpu", "cortex-a57"])
        self.assertNotIn("-cpu", platform_for("x86_64").machine_args("m"))


if __name__ == "__main__":
    unittest.main()
