#!/usr/bin/env python3
"""Writes the seed corpus of the `decode` fuzz target (fuzz/corpus/decode).

One file per packet shape, in both protocol versions, valid packets with and
without properties, plus a few packet streams; built with the integration
suite's hand-written encoder (tests/mqtt_raw.py), independent of the codec
under test. Run from the repository root:

    python3 fuzz/make_decode_seeds.py
"""
import hashlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import mqtt_raw as m  # noqa: E402

OUT = ROOT / "fuzz" / "corpus" / "decode"

PUBLISH_PROPS = {
    "PayloadFormatIndicator": 1,
    "MessageExpiryInterval": 60,
    "ContentType": "text/plain",
    "ResponseTopic": "reply/to",
    "CorrelationData": b"id",
    "TopicAlias": 3,
    "UserProperty": [("k", "v")],
}
CONNECT_PROPS = {
    "SessionExpiryInterval": 3600,
    "ReceiveMaximum": 10,
    "MaximumPacketSize": 4096,
    "TopicAliasMaximum": 5,
    "RequestProblemInformation": 1,
    "UserProperty": [("a", "b")],
}


def seeds():
    for v in (4, 5):
        props = (lambda p: p) if v == 5 else (lambda p: None)
        yield m.connect_packet("c1", version=v, clean=True, keepalive=30)
        yield m.connect_packet(
            "c2",
            version=v,
            clean=False,
            props=props(CONNECT_PROPS),
            will=m.Will("will/t", b"bye", qos=1, retain=True,
                        props=props({"WillDelayInterval": 5})),
            username="user",
            password=b"pw",
        )
        yield m.connect_packet("", version=v)
        yield m.publish_packet("a/b", b"hello", version=v)
        yield m.publish_packet("a/b", b"x" * 40, qos=1, pid=7, retain=True, version=v,
                               props=props(PUBLISH_PROPS))
        yield m.publish_packet("$SYS/x", b"", qos=2, pid=65535, dup=True, version=v)
        for ptype in (m.PUBACK, m.PUBREC, m.PUBREL, m.PUBCOMP):
            yield m.ack_packet(ptype, 9, version=v)
            if v == 5:
                yield m.ack_packet(ptype, 9, version=v, reason=0x80,
                                   props={"ReasonString": "no"})
        yield m.subscribe_packet([("a/+/c", 1), ("#", 2)], pid=3, version=v)
        if v == 5:
            yield m.subscribe_packet(
                [("$share/g/a/#", m.sub_options(1, rap=True, rh=2)),
                 ("x", m.sub_options(2, no_local=True, rh=1))],
                pid=4, version=v, props={"SubscriptionIdentifier": [42]})
        yield m.unsubscribe_packet(["a/+/c", "$share/g/a/#"], pid=5, version=v)
        yield m.PINGREQ_PACKET
        yield m.disconnect_packet(version=v)
        if v == 5:
            yield m.disconnect_packet(version=v, reason=0x04,
                                      props={"SessionExpiryInterval": 0})
        # A stream: several packets back to back.
        yield (m.connect_packet("s", version=v)
               + m.subscribe_packet([("t/#", 1)], pid=1, version=v)
               + m.publish_packet("t/1", b"p", qos=1, pid=2, version=v)
               + m.ack_packet(m.PUBACK, 1, version=v)
               + m.PINGREQ_PACKET
               + m.disconnect_packet(version=v))
    # Server-to-client packets: the decoder must refuse them cleanly.
    yield bytes([0x20, 0x02, 0x00, 0x00])  # CONNACK
    yield bytes([0x90, 0x03, 0x00, 0x01, 0x01])  # SUBACK
    yield bytes([0xD0, 0x00])  # PINGRESP
    yield bytes([0xF0, 0x00])  # AUTH


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds():
        name = hashlib.sha1(seed).hexdigest()[:16]
        (OUT / name).write_bytes(seed)
        count += 1
    print(f"{count} seeds in {OUT}")


if __name__ == "__main__":
    main()
