"""The server HTTP API driven by `cent`, Centrifugo's Python API client from PyPI.

Run by scripts/test-api-clients.sh against a running hubbub (CENT_TEST_URL, CENT_TEST_API_KEY):
every method cent has (it has no `rpc`), batch included, and the publish options.
"""

import base64
import json
import os
import unittest
import uuid

from cent import (
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    Client,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentTransportError

URL = os.environ["CENT_TEST_URL"] + "/api"
KEY = os.environ["CENT_TEST_API_KEY"]


def channel():
    return "py-" + uuid.uuid4().hex[:12]


class CentTest(unittest.TestCase):
    def setUp(self):
        self.client = Client(URL, KEY, timeout=5)

    def tearDown(self):
        self.client.close()

    def test_publish_and_history(self):
        ch = channel()
        r = self.client.publish(PublishRequest(channel=ch, data={"n": 1}, tags={"k": "v"}))
        self.assertEqual(r.offset, 1)
        self.assertTrue(r.epoch)
        h = self.client.history(HistoryRequest(channel=ch, limit=10))
        self.assertEqual(h.offset, 1)
        self.assertEqual([p.data for p in h.publications], [{"n": 1}])
        self.assertEqual(h.publications[0].tags, {"k": "v"})
        self.client.history_remove(HistoryRemoveRequest(channel=ch))
        self.assertEqual(self.client.history(HistoryRequest(channel=ch, limit=10)).publications, [])

    def test_publish_options(self):
        ch = channel()
        first = self.client.publish(PublishRequest(channel=ch, data={"n": 1}, idempotency_key="k1"))
        retry = self.client.publish(PublishRequest(channel=ch, data={"n": 1}, idempotency_key="k1"))
        self.assertEqual((first.offset, first.epoch), (retry.offset, retry.epoch))
        skipped = self.client.publish(PublishRequest(channel=ch, data={"n": 2}, skip_history=True))
        self.assertEqual(skipped.offset, 0)
        b64 = base64.b64encode(json.dumps({"n": 3}).encode()).decode()
        self.client.publish(PublishRequest(channel=ch, data=None, b64data=b64))
        h = self.client.history(HistoryRequest(channel=ch, limit=10))
        self.assertEqual([p.data for p in h.publications], [{"n": 1}, {"n": 3}])

    def test_unknown_option_is_refused(self):
        # cent passes extra fields through; the server names the one it does not know.
        with self.assertRaises(CentTransportError) as e:
            self.client.publish(PublishRequest(channel=channel(), data={}, delta=True))
        self.assertEqual(e.exception.status_code, 400)

    def test_broadcast(self):
        a, b = channel(), channel()
        r = self.client.broadcast(BroadcastRequest(channels=[a, b, "nosuchns:x"], data={"all": 1}))
        self.assertEqual([x.result.offset for x in r.responses[:2]], [1, 1])
        self.assertEqual(r.responses[2].error.code, 102)

    def test_user_commands(self):
        # No connection of this user: every node accepts and does nothing.
        user = "py-user"
        self.client.subscribe(SubscribeRequest(user=user, channel=channel()))
        self.client.unsubscribe(UnsubscribeRequest(user=user, channel=channel()))
        self.client.refresh(RefreshRequest(user=user, expire_at=2_000_000_000))
        self.client.disconnect(DisconnectRequest(user=user))

    def test_presence_channels_info(self):
        ch = channel()
        self.assertEqual(self.client.presence(PresenceRequest(channel=ch)).presence, {})
        stats = self.client.presence_stats(PresenceStatsRequest(channel=ch))
        self.assertEqual((stats.num_clients, stats.num_users), (0, 0))
        self.assertIsNotNone(self.client.channels(ChannelsRequest(pattern="py-*")).channels)
        info = self.client.info(InfoRequest())
        self.assertEqual(len(info.nodes), 1)
        self.assertEqual(info.nodes[0].version, "0.1.0")

    def test_errors(self):
        with self.assertRaises(CentApiResponseError) as e:
            self.client.publish(PublishRequest(channel="nosuchns:x", data={}))
        self.assertEqual(e.exception.code, 102)

    def test_batch(self):
        ch = channel()
        r = self.client.batch(
            BatchRequest(
                requests=[
                    PublishRequest(channel=ch, data={"n": 1}),
                    PublishRequest(channel=ch, data={"n": 2}),
                    HistoryRequest(channel=ch, limit=10),
                    PresenceStatsRequest(channel=ch),
                    InfoRequest(),
                ]
            )
        )
        self.assertEqual([r.replies[0].offset, r.replies[1].offset], [1, 2])
        self.assertEqual([p.data for p in r.replies[2].publications], [{"n": 1}, {"n": 2}])
        self.assertEqual(r.replies[3].num_clients, 0)
        self.assertEqual(len(r.replies[4].nodes), 1)
        r = self.client.batch(
            BatchRequest(requests=[PublishRequest(channel=channel(), data={}) for _ in range(5)], parallel=True)
        )
        self.assertEqual([x.offset for x in r.replies], [1] * 5)


if __name__ == "__main__":
    unittest.main(verbosity=2)
