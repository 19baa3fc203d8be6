"""
The guest's assets are resolved, not pinned: the kernel is the one the
metapackage depends on today, with the version and SHA-256 apt's index
gives; the tests find what set-up made through ``current-<arch>``, never
through apt, and say why when nothing was made.
"""

import json
import os
import tempfile
import unittest
from typing import List
from unittest import mock

from avocado_vhost.peers.guest import assets

DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-57-amd64
"""
SHOW = {
    "linux-image-6.1.0-57-amd64": "Package: linux-image-6.1.0-57-amd64\n"
    "Version: 6.1.192-3\nSHA256: aa11\n",
    "busybox-static": "Package: busybox-static\nVersion: 1:1.35.0-4\n"
    "SHA256: bb22\n",
}


def fake_apt(options: List[str], *args: str) -> str:
    if args[0] == "depends":
        return DEPENDS
    return SHOW[args[-1]]


class GuestAssets(unittest.TestCase):

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="avh-assets-")
        self.addCleanup(self.tmp.cleanup)
        patcher = mock.patch.dict(os.environ,
                                  {"AVOCADO_VHOST_CACHE": self.tmp.name})
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_the_kernel_is_what_the_metapackage_depends_on_today(self):
        with mock.patch.object(assets, "_apt", fake_apt):
            pins = assets.resolve(assets.ARCHES["x86_64"], [])
        self.assertEqual(pins, (
            assets.Pin("linux-image-6.1.0-57-amd64", "6.1.192-3", "aa11"),
            assets.Pin("busybox-static", "1:1.35.0-4", "bb22")))

    def test_a_metapackage_naming_no_kernel_is_an_error(self):
        def no_kernel(options: List[str], *args: str) -> str:
            return "linux-image-amd64\n  Depends: something-else\n"
        with mock.patch.object(assets, "_apt", no_kernel):
            with self.assertRaisesRegex(assets.AssetsMissing,
                                        "names no kernel package"):
                assets.resolve(assets.ARCHES["x86_64"], [])

    def test_nothing_made_says_why(self):
        with self.assertRaisesRegex(assets.AssetsMissing, "not made"):
            assets.load("x86_64")
        os.makedirs(os.path.join(self.tmp.name, "guest"))
        with open(os.path.join(self.tmp.name, "guest",
                               "current-x86_64.ERROR"), "w") as f:
            f.write("apt-get update (amd64) failed: no network")
        with self.assertRaisesRegex(assets.AssetsMissing, "no network"):
            assets.load("x86_64")

    def test_the_tests_load_what_current_names(self):
        pins = (assets.Pin("linux-image-6.1.0-57-amd64", "6.1.192-3", "aa"),)
        where = assets.cache_dir("x86_64", pins)
        os.makedirs(where)
        with open(os.path.join(where, "manifest.json"), "w") as f:
            json.dump({"packages": [{"package": pins[0].package,
                                     "version": pins[0].version}]}, f)
        with open(os.path.join(self.tmp.name, "guest", "current-x86_64"),
                  "w") as f:
            f.write(os.path.basename(where) + "\n")
        made = assets.load("x86_64")
        self.assertEqual(made.kernel, os.path.join(where, "vmlinuz"))
        self.assertEqual(assets.describe(made),
                         "linux-image-6.1.0-57-amd64 6.1.192-3")

    def test_offline_set_up_keeps_what_it_made(self):
        self.test_the_tests_load_what_current_names()
        failing = mock.patch.object(
            assets, "_private_apt",
            side_effect=assets.AssetsMissing("apt-get update failed"))
        with failing, mock.patch.object(assets, "_build") as build:
            made = assets.make("x86_64")
        build.assert_not_called()
        self.assertIn("6.1.0-57", made.kernel)


if __name__ == "__main__":
    unittest.main()
