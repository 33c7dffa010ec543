"""Command replies are read as documented (issue 15 item 10): the status is
compared without regard to case, `in_progress` reports keep the command
open with their progress, and a payload whose status is not one we know
is kept whole as the result. Real clients: paho-mqtt 3.1.1 and 5.0."""

from __future__ import annotations

import json

import pytest

from helpers import V311, V5, Api, Client, unique, wait_until

TOKEN = "command-replies-token-0123456789"
BROKER_CONFIG = {"auth": {"allow_anonymous": False}, "api": {"token": TOKEN}}
FINAL = {"succeeded", "failed", "timed_out", "expired", "cancelled"}


@pytest.fixture
def api(broker) -> Api:
    return Api(broker.api_port, TOKEN)


def command_of(api: Api, command_id: str) -> dict:
    return api.ok("GET", f"/api/v1/commands/{command_id}")


def run_command(broker, api, version: int, replies: list[bytes]) -> list[dict]:
    """Sends one command to a fresh device that answers with `replies` in
    turn; returns the command as seen after each reply."""
    dev = unique("cr")
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-1"}, expect=201)
    d = Client(broker.port, client_id=dev, username=dev, password="dev-pw-1", version=version)
    try:
        assert d.subscribe(f"$commands/{dev}/+", qos=1) == [1]
        assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{dev}/presence")["online"] is True)
        cmd = api.ok("POST", f"/api/v1/devices/{dev}/commands", {"name": "update", "timeout_ms": 30_000},
                     expect=201)
        msg = d.get()
        if version == V5:
            reply_topic = msg.props["ResponseTopic"]
        else:
            reply_topic = json.loads(msg.payload)["reply_topic"]
        seen = []
        for body in replies:
            before = command_of(api, cmd["id"])
            assert d.publish(reply_topic, body, qos=1) in (0, 0x10)

            def changed():
                now = command_of(api, cmd["id"])
                return now != before and (now["status"] in FINAL or now.get("result") is not None)

            assert wait_until(changed, 5), command_of(api, cmd["id"])
            seen.append(command_of(api, cmd["id"]))
        return seen
    finally:
        d.close()


@pytest.mark.parametrize("version", [V5, V311])
def test_status_is_read_without_regard_to_case(broker, api, version):
    (done,) = run_command(broker, api, version, [b'{"status":"FAILED","result":{"code":7}}'])
    assert (done["status"], done["reason"], done["result"]) == ("failed", "device_error", {"code": 7}), done


@pytest.mark.parametrize("version", [V5, V311])
def test_in_progress_keeps_the_command_open_with_its_progress(broker, api, version):
    progress, done = run_command(broker, api, version, [b'{"status":"in_progress","progress":30}',
                                                        b'{"status":"Succeeded","result":"ok"}'])
    assert progress["status"] == "delivered", progress
    assert progress["result"] == {"status": "in_progress", "progress": 30}, progress
    assert (done["status"], done["result"]) == ("succeeded", "ok"), done


def test_an_unknown_status_keeps_the_payload_as_result(broker, api):
    (done,) = run_command(broker, api, V5, [b'{"status":"weird","detail":1}'])
    assert (done["status"], done["result"]) == ("succeeded", {"status": "weird", "detail": 1}), done
