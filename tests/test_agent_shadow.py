"""Shadow sync through `myriad agent` (issue 19, `[shadow]`): real `myriad serve` and
`myriad agent` processes. The agent's `apply` program records the desired fields it is given
and applies them to a state file; its `report` program prints that state file. (a) An
operator's desired change reaches the device, is applied and reported back (no delta left);
(b) changes made on the device while the broker is down are reported after it comes back,
merged, and an operator's change made meanwhile is applied after the reconnect; (c) the
agent restarted (SIGKILL) keeps its copy and applies nothing twice."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from helpers import Api, Broker, wait_until
from test_ota_e2e import CONFIG, TOKEN, AgentProc, pinned_key

pytestmark = pytest.mark.myriad_only

# apply: stdin = desired fields; merges them into DIR/state.json, appends them to
# DIR/applied.jsonl, prints the fields as applied.
APPLY = r'''
import json, os, sys
d = sys.argv[1]
fields = json.load(sys.stdin)
path = os.path.join(d, "state.json")
state = json.load(open(path)) if os.path.exists(path) else {}
state.update(fields)
json.dump(state, open(path + ".tmp", "w")); os.replace(path + ".tmp", path)
with open(os.path.join(d, "applied.jsonl"), "a") as f:
    f.write(json.dumps(fields) + "\n")
print(json.dumps(fields))
'''
REPORT = r'''
import json, os, sys
path = os.path.join(sys.argv[1], "state.json")
print(open(path).read() if os.path.exists(path) else "{}")
'''


def shadow(api: Api, dev: str) -> dict:
    return api.ok("GET", f"/api/v1/devices/{dev}/shadow")


def make_agent(tmp_path: Path, broker: Broker, api: Api, dev: str) -> tuple[AgentProc, Path]:
    api.ok("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-123"}, expect=201)
    app = tmp_path / f"{dev}-app"
    app.mkdir()
    (app / "apply.py").write_text(APPLY)
    (app / "report.py").write_text(REPORT)
    (app / "state.json").write_text(json.dumps({"fw": "1.0", "led": "off", "boot": "a"}))
    agent = AgentProc(tmp_path, dev, broker, pinned_key(api), b"x" * 1000, ["sh", "-c", "exit 0"],
                      mqtt={"reconnect_min_ms": 200, "reconnect_max_ms": 1000},
                      extra={"shadow": {"apply": [sys.executable, str(app / "apply.py"), str(app)],
                                        "report": [sys.executable, str(app / "report.py"), str(app)],
                                        "report_every_secs": 1, "timeout_secs": 10}})
    return agent, app


def applied(app: Path) -> list[dict]:
    path = app / "applied.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_desired_changes_are_applied_and_reported(tmp_path):
    broker = Broker(tmp_path / "srv", raw_config=CONFIG).start()
    api = Api(broker.api_port, TOKEN)
    agent, app = make_agent(tmp_path, broker, api, "shadow-a")
    try:
        agent.start()
        # The report program's first run reports the device's state.
        assert wait_until(lambda: shadow(api, "shadow-a")["state"].get("reported") == {"fw": "1.0", "led": "off", "boot": "a"},
                          15, 0.1), shadow(api, "shadow-a")
        api.ok("PATCH", "/api/v1/devices/shadow-a/shadow", {"desired": {"led": "on", "level": 3}})
        assert wait_until(lambda: "delta" not in shadow(api, "shadow-a")["state"], 15, 0.1), shadow(api, "shadow-a")
        doc = shadow(api, "shadow-a")
        assert doc["state"]["reported"] == {"fw": "1.0", "led": "on", "level": 3, "boot": "a"}, doc
        assert applied(app) == [{"led": "on", "level": 3}]
        assert json.loads((app / "state.json").read_text()) == {"fw": "1.0", "led": "on", "level": 3, "boot": "a"}

        # (b) Offline: the device changes its own state and the operator changes desired.
        broker.stop()
        state = json.loads((app / "state.json").read_text())
        state.update({"fw": "1.1", "temp": 20})
        del state["boot"]  # removed keys are reported as null: deleted on the platform
        (app / "state.json").write_text(json.dumps(state))
        time.sleep(2.5)  # the report program runs while offline: the changes wait, merged
        broker.start()
        api = Api(broker.api_port, TOKEN)
        agent.config["mqtt"]["port"] = broker.port
        api.ok("PATCH", "/api/v1/devices/shadow-a/shadow", {"desired": {"led": "blink"}})
        # The agent was pointed at the old port: restart it on the new one (SIGKILL, as a
        # crash): its saved copy keeps what waited.
        agent.stop()
        from helpers import to_toml
        agent.cfg.write_text(to_toml(agent.config))
        agent.start()

        def settled():
            doc = shadow(api, "shadow-a")
            return "delta" not in doc["state"] and doc["state"]["reported"].get("fw") == "1.1"

        assert wait_until(settled, 20, 0.2), shadow(api, "shadow-a")
        doc = shadow(api, "shadow-a")
        assert doc["state"]["reported"] == {"fw": "1.1", "led": "blink", "level": 3, "temp": 20}, doc
        assert applied(app) == [{"led": "on", "level": 3}, {"led": "blink"}], applied(app)
        # (c) Another restart applies nothing again.
        agent.stop()
        agent.start()
        time.sleep(3)
        assert applied(app) == [{"led": "on", "level": 3}, {"led": "blink"}], applied(app)
        assert "delta" not in shadow(api, "shadow-a")["state"]
    finally:
        agent.stop()
        broker.stop()


def test_bad_shadow_config_is_named(tmp_path):
    import subprocess
    import os
    from helpers import agent_command, to_toml
    cfg = {"slot_a": str(tmp_path / "a"), "slot_b": str(tmp_path / "b"), "state_dir": str(tmp_path / "s"),
           "hardware_type": "hw", "ed25519_keys": ["ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"],
           "mqtt": {"host": "127.0.0.1", "id": "d1", "password": "p", "api": "http://127.0.0.1:1"},
           "shadow": {"report": ["x"], "report_every_secs": 0}}
    (tmp_path / "agent.toml").write_text(to_toml(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    done = subprocess.run([*agent_command(), "--config", str(tmp_path / "agent.toml")],
                          capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and "shadow.report_every_secs" in done.stderr, done.stderr
