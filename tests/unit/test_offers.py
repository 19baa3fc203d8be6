"""The offers of the capability matrix change a back-end's configuration
as their names say, and say what a test's back-end cannot have."""

import unittest

from avocado_vhost.vhost_user import (BackendConfig, ProtocolFeature,
                                      VirtioFeature)
from avocado_vhost.vhost_user.offers import (MODERN_EXTRAS, OFFERS,
                                             asked_on_purpose, names)

P = ProtocolFeature


class Offers(unittest.TestCase):

    def offered(self, offer, config=None):
        return OFFERS[offer].apply(config or BackendConfig()).protocol_features

    def test_modern_adds_what_a_current_back_end_offers(self):
        got = self.offered("modern")
        self.assertEqual(got & MODERN_EXTRAS, MODERN_EXTRAS)
        self.assertTrue(got & P.REPLY_ACK and got & P.MQ)
        self.assertFalse(got & P.CONFIG, "CONFIG without a config space")
        self.assertTrue(self.offered("modern", BackendConfig(config=b"x"))
                        & P.CONFIG)

    def test_each_other_offer_takes_away_its_feature(self):
        self.assertEqual(self.offered("legacy"), 0)
        self.assertFalse(self.offered("no-reply-ack") & P.REPLY_ACK)
        self.assertFalse(self.offered("no-mq") & P.MQ)
        for offer in ("no-reply-ack", "no-mq"):
            self.assertEqual(self.offered(offer) & MODERN_EXTRAS,
                             MODERN_EXTRAS, offer)

    def test_the_configuration_given_is_not_changed(self):
        config = BackendConfig()
        before = config.protocol_features
        OFFERS["legacy"].apply(config)
        self.assertEqual(config.protocol_features, before)

    def test_a_feature_asked_for_on_purpose(self):
        config = BackendConfig()
        config.protocol_features |= int(P.NET_MTU)
        wanted = asked_on_purpose(config)
        self.assertEqual(OFFERS["legacy"].lacks(wanted), P.NET_MTU)
        self.assertEqual(OFFERS["no-mq"].lacks(wanted), P(0))
        # the ordinary features are the offers' business, not the test's
        self.assertEqual(asked_on_purpose(BackendConfig()), 0)

    def test_names(self):
        self.assertEqual(names(int(P.MQ | P.REPLY_ACK)), "MQ|REPLY_ACK")
        self.assertEqual(names(0), "none")



class NetOffer(unittest.TestCase):
    """BackendConfig.net: the one spelling of a virtio-net offer."""

    def test_one_pair_has_no_multiqueue(self):
        config = BackendConfig.net()
        self.assertEqual((config.queue_num, config.max_rings), (1, 2))
        self.assertFalse(config.features & VirtioFeature.NET_F_MQ)
        self.assertTrue(config.features & VirtioFeature.RING_INDIRECT_DESC)

    def test_pairs_bring_mq_and_the_control_queue(self):
        config = BackendConfig.net(3, indirect=False, packed=True,
                                   unmap_replaced_log=True)
        mq = VirtioFeature.NET_F_MQ | VirtioFeature.NET_F_CTRL_VQ
        self.assertEqual(config.features & mq, mq)
        self.assertTrue(config.features & VirtioFeature.RING_PACKED)
        self.assertFalse(config.features & VirtioFeature.RING_INDIRECT_DESC)
        self.assertEqual((config.queue_num, config.max_rings), (3, 6))
        self.assertTrue(config.unmap_replaced_log)
        # what every back-end offers stays: logging for migration
        self.assertTrue(config.features & VirtioFeature.LOG_ALL)


if __name__ == "__main__":
    unittest.main()
