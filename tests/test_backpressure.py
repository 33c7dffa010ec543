"""Publisher flow control with real clients: a QoS 1 publisher whose messages
would overflow a connected subscriber's full queue is held back (no PUBACK)
until the subscriber catches up, and nothing is lost."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import HOST, Broker, unique, wait_until

pytestmark = [pytest.mark.myriad_only, pytest.mark.timeout(60)]

QUEUE = 10
TOTAL = 40


@pytest.fixture(scope="module")
def held_broker(tmp_path_factory):
    broker = Broker(
        tmp_path_factory.mktemp("backpressure"),
        {"mqtt": {"max_queued_messages": QUEUE, "publisher_hold_ms": 30_000}},
    ).start()
    yield broker
    broker.stop()


def test_a_slow_subscriber_holds_a_qos1_publisher_back_and_loses_nothing(held_broker):
    topic = unique("bp") + "/t"
    received: list[str] = []
    pending: list[tuple[int, int]] = []
    acking = threading.Event()
    lock = threading.Lock()

    # 5.0 subscriber with a window of one that acknowledges only when told to.
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("bp-sub"),
                      protocol=mqtt.MQTTv5, manual_ack=True)

    def on_message(client, userdata, message):
        with lock:
            received.append(message.payload.decode())
            if acking.is_set():
                client.ack(message.mid, message.qos)
            else:
                pending.append((message.mid, message.qos))

    sub.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 1
    sub.connect(HOST, held_broker.port, properties=props)
    sub.loop_start()
    granted = []
    sub.on_subscribe = lambda c, u, mid, codes, p: granted.extend(codes)
    sub.subscribe(topic, qos=1)
    assert wait_until(lambda: granted, timeout=5)

    acked: list[int] = []
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("bp-pub"), protocol=mqtt.MQTTv311)
    pub.max_inflight_messages_set(TOTAL)
    pub.on_publish = lambda c, u, mid, rc, p: acked.append(mid)
    pub.connect(HOST, held_broker.port)
    pub.loop_start()
    try:
        for i in range(TOTAL):
            pub.publish(topic, f"m{i}", qos=1)
        # One message in the subscriber's window and QUEUE queued are accepted;
        # the rest wait for their PUBACK instead of pushing the oldest out.
        assert wait_until(lambda: len(acked) >= 1 + QUEUE, timeout=5)
        time.sleep(1.0)
        assert len(acked) == 1 + QUEUE, f"{len(acked)} acknowledged while the subscriber is stuck"
        assert received == ["m0"]

        acking.set()
        with lock:
            for mid, qos in pending:
                sub.ack(mid, qos)
        assert wait_until(lambda: len(acked) == TOTAL and len(received) == TOTAL, timeout=20), (
            f"{len(acked)} acknowledged, {len(received)} received"
        )
        assert received == [f"m{i}" for i in range(TOTAL)]
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
