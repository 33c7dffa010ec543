"""`myriad agent` command handlers (issue 19, `[[commands]]`): real `myriad serve` and
`myriad agent` processes, commands sent with the HTTP API, answered by configured
executables in the reply form of the connection's protocol (MQTT 5.0: Response Topic and
Correlation Data; 3.1.1: the envelope's `reply_topic`): success with the handler's output as
result (after an in-progress reply), failure with the exit status, a timeout, a name without
handler; and a command delivered again (same id, published by an admin app) is neither run
nor answered a second time, also after an agent restart (the ids are persisted)."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from helpers import V5, Api, Broker, Client, unique, wait_until
from test_ota_e2e import CONFIG, TOKEN, AgentProc, pinned_key

pytestmark = pytest.mark.myriad_only

HANDLER = r'''
import json, os, sys, time
name, runs = sys.argv[1], sys.argv[2]
data = sys.stdin.read()
with open(runs, "a") as f:
    f.write(name + "\n")
if name == "echo":
    print(json.dumps({"status": "in_progress", "progress": 50}), flush=True)
    print(json.dumps({"got": json.loads(data)}))
elif name == "fail":
    print("broken")
    sys.exit(3)
elif name == "slow":
    time.sleep(5)
'''

FINAL = {"succeeded", "failed", "timed_out", "expired", "cancelled"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("agent-commands"), raw_config=CONFIG).start()
    yield b
    b.stop()


def make_agent(tmp_path, broker, protocol: str) -> tuple[AgentProc, Api, str]:
    api = Api(broker.api_port, TOKEN)
    dev = unique("cmd")
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-123"}, expect=201)
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    runs = tmp_path / "runs"
    handlers = [{"name": n, "command": [sys.executable, str(script), n, str(runs)], "timeout_secs": 1 if n == "slow" else 10}
                for n in ("echo", "fail", "slow")]
    agent = AgentProc(tmp_path, dev, broker, pinned_key(api), b"image-1" * 100, [],
                      mqtt={"protocol": protocol}, extra={"commands": handlers})
    return agent, api, str(runs)


def command(api: Api, dev: str, name: str, payload=None) -> dict:
    body = {"name": name, "timeout_ms": 20_000}
    if payload is not None:
        body["payload"] = payload
    cmd = api.ok("POST", f"/api/v1/devices/{dev}/commands", body, expect=201)
    assert wait_until(lambda: api.ok("GET", f"/api/v1/commands/{cmd['id']}")["status"] in FINAL, 20)
    return api.ok("GET", f"/api/v1/commands/{cmd['id']}")


def runs_of(path: str) -> list[str]:
    try:
        return open(path).read().split()
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_handlers_reply_in_the_protocols_form_and_redelivery_runs_once(tmp_path, broker, protocol):
    agent, api, runs = make_agent(tmp_path, broker, protocol)
    try:
        agent.start()
        assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{agent.id}/presence")["online"] is True, 15)
        done = command(api, agent.id, "echo", {"x": 1})
        assert (done["status"], done["result"]) == ("succeeded", {"got": {"x": 1}}), done
        log = (agent.dir / "agent.1.log").read_text(errors="replace")
        assert ("version=V5" if protocol == "5" else "version=V311") in re.sub(r"\x1b\[[0-9;]*m", "", log), log[-2000:]
        failed = command(api, agent.id, "fail")
        assert failed["status"] == "failed", failed
        assert failed["result"]["output"] == "broken" and "exit status: 3" in failed["result"]["reason"], failed
        slow = command(api, agent.id, "slow")
        assert slow["status"] == "failed" and "timed out" in json.dumps(slow["result"]), slow
        none = command(api, agent.id, "nope")
        assert none["status"] == "failed" and "no handler" in json.dumps(none["result"]), none
        assert runs_of(runs) == ["echo", "fail", "slow"]

        # The same command id delivered again (an admin app republishes it): not run, not
        # answered; after a restart of the agent too.
        user, password = api.create_app(admin=True)
        app = Client(broker.port, username=user, password=password, version=V5)
        watch = Client(broker.port, username=user, password=password, version=V5)
        try:
            watch.subscribe(f"$commands/{agent.id}/reply/#", 1)
            reply_topic = f"$commands/{agent.id}/reply/{done['id']}"

            def redeliver():
                if protocol == "5":
                    app.publish(f"$commands/{agent.id}/echo", json.dumps({"x": 2}), qos=1,
                                props={"ResponseTopic": reply_topic, "CorrelationData": done["id"].encode(),
                                       "UserProperty": [("command_id", done["id"])]})
                else:
                    app.publish(f"$commands/{agent.id}/echo", json.dumps(
                        {"command_id": done["id"], "name": "echo", "reply_topic": reply_topic,
                         "payload": {"x": 2}}), qos=1)

            redeliver()
            assert wait_until(lambda: "seen already" in (agent.dir / "agent.1.log").read_text(errors="replace"), 10)
            agent.stop()
            agent.start()
            assert wait_until(lambda: api.ok("GET", f"/api/v1/devices/{agent.id}/presence")["online"] is True, 15)
            time.sleep(0.5)
            redeliver()
            assert wait_until(lambda: "seen already" in (agent.dir / "agent.2.log").read_text(errors="replace"), 10)
            # No reply to either copy.
            watch.expect_none(1.0)
            assert runs_of(runs) == ["echo", "fail", "slow"]
        finally:
            app.close()
            watch.close()
    finally:
        agent.stop()
