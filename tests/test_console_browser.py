"""The web console (issue 21) in a real browser: Debian's Chromium driven by Playwright against
`myriad serve`. An admin made with the bootstrap token logs in through the form, creates a
device, watches it come online live (server-sent events) when a paho device connects, edits its
shadow (the delta arrives at the device) and meets a version conflict, sends a command the
device answers, charts telemetry the device published, imports devices with a bad row, runs a
small rollout to the device, and deletes through the confirmation dialog; a viewer finds no
state-changing button and the API refuses the same requests from the page (its cookie and CSRF
token) with 403. Screenshots of every page go to test-artifacts/console/. Also: the console's
assets, content types and security headers over plain HTTP."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import HOST, REPO_ROOT, Api, Broker, unique, wait_until

pytestmark = pytest.mark.myriad_only

CHROMIUM = "/usr/bin/chromium"
TOKEN = "console-browser-token-0123456789"
CONFIG = f"""
[auth]
allow_anonymous = false

[api]
token = "{TOKEN}"

[ota]
max_artifact_bytes = 1048576
"""
ADMIN, ADMIN_PW = "alice", "alice-password-1"
VIEWER, VIEWER_PW = "victor", "victor-password-1"
SHOTS = REPO_ROOT / "test-artifacts" / "console"
OTA_STEPS = ["DOWNLOADING", "VERIFYING", "INSTALLING", "REBOOTING", "SUCCEEDED"]
LIVE = 15_000  # ms: the longest wait for a live update in the page


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("console"), raw_config=CONFIG).start()
    assert wait_until(lambda: b.api_port is not None, 10), "no API port"
    yield b
    crashed = not b.alive()
    code = b.stop()
    if crashed:
        pytest.fail(f"server exited during the module (exit={code})\n{b.log_tail()}")


@pytest.fixture(scope="module")
def api(server) -> Api:
    return Api(server.api_port, TOKEN)


@pytest.fixture(scope="module")
def users(api):
    """An admin and a viewer, made with the bootstrap token."""
    api.ok("POST", "/api/v1/users", {"username": ADMIN, "role": "admin", "password": ADMIN_PW}, expect=201)
    api.ok("POST", "/api/v1/users", {"username": VIEWER, "role": "viewer", "password": VIEWER_PW}, expect=201)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


class Problems:
    """Console errors of a page (CSP violations included) and failed asset loads."""

    def __init__(self, page):
        self.items: list[str] = []
        page.on("console", lambda m: self.items.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.items.append(f"page error: {e}"))

    def unexpected(self) -> list[str]:
        # 4xx answers the test provokes on purpose show as "Failed to load resource" lines.
        return [p for p in self.items if "Failed to load resource" not in p]


def new_page(browser, server, width=1280, height=900):
    ctx = browser.new_context(viewport={"width": width, "height": height}, base_url=f"http://{HOST}:{server.api_port}")
    page = ctx.new_page()
    page.set_default_timeout(LIVE)
    return ctx, page, Problems(page)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def login(page, username: str, password: str, keyboard: bool = False) -> None:
    """Logs in through the form (`keyboard`: typing only, Tab to the next field, Enter)."""
    from playwright.sync_api import expect

    page.goto("/")
    expect(page.get_by_role("heading", name="Myriad console")).to_be_visible()
    if keyboard:
        expect(page.get_by_label("Username")).to_be_focused()
        page.keyboard.type(username)
        page.keyboard.press("Tab")
        expect(page.get_by_label("Password")).to_be_focused()
        page.keyboard.type(password)
        page.keyboard.press("Enter")
    else:
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()


def go(page, hash_path: str, heading: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"/console/#{hash_path}")
    expect(page.get_by_role("heading", name=heading, exact=True).first).to_be_visible()


class Device:
    """A paho MQTT 5 device: records shadow deltas, answers commands (succeeded, echoing the
    payload), follows OTA notifications (DOWNLOADING at once, then every further step to SUCCEEDED
    once `ota_go` is set), publishes telemetry."""

    def __init__(self, port: int, dev_id: str, password: str):
        self.id = dev_id
        self.deltas: list[dict] = []
        self.commands: list[dict] = []
        self.notes: list[dict] = []
        self.ota_go = threading.Event()
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev_id, protocol=mqtt.MQTTv5,
                             reconnect_on_failure=False)
        self.c.username_pw_set(dev_id, password)
        self.c.on_message = self._on_message
        connected, subscribed = threading.Event(), threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: connected.set()
        self.c.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.c.connect(HOST, port, 30)
        self.c.loop_start()
        assert connected.wait(5), "device did not connect"
        self.c.subscribe([(f"$shadow/{dev_id}/update/delta", 1), (f"$commands/{dev_id}/+", 1),
                          (f"$ota/{dev_id}/notify", 1)])
        assert subscribed.wait(5), "device did not subscribe"

    def _on_message(self, client, userdata, msg):
        body = json.loads(msg.payload) if msg.payload else None
        if msg.topic.endswith("/update/delta"):
            with self.lock:
                self.deltas.append(body)
        elif msg.topic.startswith("$commands/"):
            with self.lock:
                self.commands.append(body)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = msg.properties.CorrelationData
            reply = {"status": "succeeded", "result": {"echo": body}}
            client.publish(msg.properties.ResponseTopic, json.dumps(reply), 1, properties=props)
        elif msg.topic.endswith("/notify"):
            with self.lock:
                self.notes.append(body)
            if body.get("cancel"):
                return
            size = body["artifact"]["size"]
            first = {"rollout": body["rollout"], "state": "DOWNLOADING", "done": size // 2, "total": size}
            client.publish(f"$ota/{self.id}/progress", json.dumps(first), 1)
            threading.Thread(target=self._finish_update, args=(body, size), daemon=True).start()

    def _finish_update(self, note: dict, size: int) -> None:
        if not self.ota_go.wait(60):
            return
        for state in OTA_STEPS:
            report = {"rollout": note["rollout"], "state": state}
            if state == "DOWNLOADING":
                report.update(done=size, total=size)
            self.c.publish(f"$ota/{self.id}/progress", json.dumps(report), 1)

    def telemetry(self, points: list[dict]) -> None:
        info = self.c.publish(f"devices/{self.id}/telemetry", json.dumps({"points": points}), 1)
        info.wait_for_publish(5)

    def seen(self, attr: str) -> list:
        with self.lock:
            return list(getattr(self, attr))

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def http_get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_assets_are_embedded_and_served_with_security_headers(server):
    port = server.api_port
    status, headers, _ = http_get(port, "/")
    assert status in (302, 303, 307, 308) and headers["location"] == "/console/"
    status, headers, body = http_get(port, "/console/")
    assert status == 200, body
    assert headers["content-type"] == "text/html; charset=utf-8"
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-cache"
    assert b'<script type="module" src="app.js"></script>' in body
    for path, ctype in [("/console/app.js", "text/javascript; charset=utf-8"),
                        ("/console/js/pages/device.js", "text/javascript; charset=utf-8"),
                        ("/console/style.css", "text/css; charset=utf-8"),
                        ("/console/vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
                        ("/console/vendor/uplot/uPlot.min.css", "text/css; charset=utf-8")]:
        status, headers, body = http_get(port, path)
        assert status == 200 and headers["content-type"] == ctype, (path, status, headers)
        assert headers["x-content-type-options"] == "nosniff"
        # The ETag answers a revalidation with 304 and no body.
        status, again, body = http_get(port, path, {"If-None-Match": headers["etag"]})
        assert status == 304 and body == b"", path
    assert "max-age" in http_get(port, "/console/vendor/uplot/uPlot.min.css")[1]["cache-control"]
    # No auth on assets, and nothing outside the embedded tree.
    for missing in ["/console/nope.js", "/console/../Cargo.toml", "/console/%2e%2e/Cargo.toml",
                    "/console/" + "a" * 300]:
        status, headers, body = http_get(port, missing)
        assert status == 404, (missing, status)
        assert json.loads(body)["status"] == 404
        assert headers["x-frame-options"] == "DENY"
    # The API itself still wants auth.
    assert http_get(port, "/api/v1/devices")[0] == 401


@pytest.mark.timeout(240)
def test_admin_runs_a_device_from_the_console(server, api, users, browser):
    from playwright.sync_api import expect

    ctx, page, problems = new_page(browser, server)
    login(page, ADMIN, ADMIN_PW)
    # A wrong password is answered on the form as the API words it, without a session.
    ctx2, page2, _ = new_page(browser, server)
    page2.goto("/console/")
    page2.get_by_label("Username").fill(ADMIN)
    page2.get_by_label("Password").fill("not-the-password")
    page2.get_by_role("button", name="Log in").click()
    expect(page2.get_by_role("alert")).to_have_text("wrong username or password")
    ctx2.close()

    # Devices: create one through the form.
    dev_id, dev_pw = unique("web"), "dev-password-1"
    go(page, "/devices", "Devices")
    form = page.get_by_role("form", name="Create a device")
    form.get_by_label("Device id").fill(dev_id)
    form.get_by_label("Name").fill("Boiler room sensor")
    form.get_by_label("Groups (comma separated)").fill("boilers")
    form.get_by_label("Password (empty: generate one)").fill(dev_pw)
    form.get_by_role("button", name="Create device").click()
    assert wait_until(lambda: api.call("GET", f"/api/v1/devices/{dev_id}")[0] == 200, 10)
    page.get_by_role("search", name="Search devices").get_by_label("Search", exact=True).fill(dev_id)
    page.get_by_role("button", name="Search", exact=True).click()
    row = page.get_by_role("row").filter(has_text=dev_id)
    expect(row).to_contain_text("Boiler room sensor")
    expect(row.locator(".badge")).to_have_text("offline")
    shot(page, "devices")

    # Device page open first; the device then connects: the badge turns online live.
    page.get_by_role("link", name=dev_id).click()
    expect(page.locator("#presence-badge .badge")).to_have_text("offline")
    device = Device(server.port, dev_id, dev_pw)
    try:
        expect(page.locator("#presence-badge .badge")).to_have_text("online", timeout=LIVE)
        expect(page.locator("#presence-state .badge")).to_have_text("online")

        # Shadow: a versioned update from the editor reaches the device as a delta.
        editor = page.get_by_label("Desired state (JSON; null removes a key)")
        editor.fill('{"led": "on", "interval": 30}')
        page.get_by_role("button", name="Send desired state").click()
        assert wait_until(lambda: any(d and d.get("state", {}).get("led") == "on" for d in device.seen("deltas")), 10), \
            device.seen("deltas")
        expect(page.locator("#shadow-delta")).to_contain_text('"interval": 30')
        version = int(page.locator("#shadow-current-version").inner_text())
        # While an edit is open someone else updates the shadow: the page shows the new version
        # live but the edit keeps the version it was based on, and sending it is a 409, shown.
        editor.fill('{"led": "blink"}')
        api.ok("PATCH", f"/api/v1/devices/{dev_id}/shadow", {"desired": {"led": "off"}})
        expect(page.locator("#shadow-current-version")).to_have_text(str(version + 1))
        expect(editor).to_have_value('{"led": "blink"}')
        page.get_by_role("button", name="Send desired state").click()
        conflict = page.locator(".error.conflict")
        expect(conflict).to_contain_text("Version conflict")
        expect(conflict).to_contain_text(f"after version {version}")
        shadow = api.ok("GET", f"/api/v1/devices/{dev_id}/shadow")
        assert shadow["state"]["desired"]["led"] == "off", "the stale edit must not land"

        # Commands: sent from the form, answered by the device, "succeeded" appears live.
        cmd_form = page.get_by_role("form", name="Send a command")
        cmd_form.get_by_label("Command name").fill("reboot")
        cmd_form.get_by_label("Payload (JSON)").fill('{"delay_s": 1}')
        cmd_form.get_by_role("button", name="Send command").click()
        expect(page.locator("span.status.succeeded").first).to_be_visible(timeout=LIVE)
        assert device.seen("commands") == [{"delay_s": 1}]

        # A retained status message, browsed and deleted further down.
        device.c.publish(f"devices/{dev_id}/status", '{"fw": "1.0.0"}', 1, retain=True).wait_for_publish(5)

        # Telemetry the device published, charted.
        now = int(time.time() * 1000)
        device.telemetry([{"ts": now - (60 - i) * 30_000, "temp": 20 + (i % 7) * 0.5} for i in range(60)])
        assert wait_until(lambda: api.call("GET", f"/api/v1/devices/{dev_id}/telemetry/latest")[1].get("metrics"), 10)
        page.reload()
        expect(page.locator("#presence-badge .badge")).to_have_text("online")
        tel = page.get_by_role("form", name="Telemetry")
        expect(tel.get_by_label("Metric")).to_have_value("temp")
        tel.get_by_role("button", name="Show").click()
        chart = page.locator("#telemetry-chart")
        expect(chart).to_have_attribute("data-points", "60")
        expect(chart.locator("canvas")).to_be_visible()
        tel.get_by_label("Aggregation").select_option("max")
        tel.get_by_role("button", name="Show").click()
        expect(chart.locator(".u-title")).to_contain_text("temp (max per")
        assert 0 < int(chart.get_attribute("data-points")) <= 60
        # The session the broker holds, and the recent events of the device.
        expect(page.get_by_role("cell", name=f"$commands/{dev_id}/+", exact=True)).to_be_visible()
        expect(page.get_by_role("region", name="Recent events")).to_contain_text("succeeded")
        shot(page, "device")

        # A small rollout to the device: artifact uploaded and rollout made from the pages.
        go(page, "/rollouts", "OTA rollouts")
        up = page.get_by_role("form", name="Upload an artifact")
        image = os.urandom(4096)
        up.get_by_label("Image file").set_input_files({"name": "fw.bin", "mimeType": "application/octet-stream", "buffer": image})
        up.get_by_label("Version").fill("2.0.0")
        hw = unique("board")
        up.get_by_label("Hardware type").fill(hw)
        up.get_by_role("button", name="Upload").click()
        expect(page.get_by_role("cell", name=hw)).to_be_visible()
        arts = api.ok("GET", "/api/v1/ota/artifacts")["artifacts"]
        assert [a["sha256"] for a in arts if a["hardware_type"] == hw] == [hashlib.sha256(image).hexdigest()]
        create = page.get_by_role("form", name="Create a rollout")
        art = next(a for a in arts if a["hardware_type"] == hw)
        create.get_by_label("Artifact").select_option(label=f"2.0.0 · {hw} · {art['id']}")
        create.get_by_label("Name").fill("web-rollout")
        create.get_by_label("Devices, group or key=value").fill(dev_id)
        create.get_by_role("button", name="Create rollout").click()
        expect(page.get_by_role("heading", name="Rollout web-rollout RUNNING")).to_be_visible()
        # The device's first report shows up live, then pause (asked first) and resume.
        expect(page.locator('[data-state="DOWNLOADING"]')).to_have_text("1", timeout=LIVE)
        page.get_by_role("button", name="Pause").click()
        dialog = page.locator("#confirm-dialog")
        expect(dialog).to_contain_text("Pause rollout web-rollout?")
        dialog.get_by_role("button", name="Pause").click()
        expect(page.locator("#rollout-status")).to_have_text("PAUSED")
        rid = page.locator(".facts dd").first.inner_text()
        assert api.ok("GET", f"/api/v1/ota/rollouts/{rid}")["status"] == "PAUSED"
        page.get_by_role("button", name="Resume").click()
        expect(page.locator("#rollout-status")).to_have_text("RUNNING")
        shot(page, "rollout")
        # The device finishes: the page follows to COMPLETED without a reload.
        device.ota_go.set()
        expect(page.locator("#rollout-status")).to_have_text("COMPLETED", timeout=LIVE)
        expect(page.locator('[data-state="SUCCEEDED"]')).to_have_text("1")
        expect(page.locator('[data-state="DOWNLOADING"]')).to_have_text("0")
        assert len(device.seen("notes")) >= 1
        # The device's own page shows its OTA state.
        page.get_by_role("link", name=dev_id).first.click()
        expect(page.locator("#ota-state")).to_have_text("SUCCEEDED")
        go(page, "/rollouts", "OTA rollouts")
        expect(page.get_by_role("row").filter(has_text=rid)).to_contain_text("SUCCEEDED: 1")
        shot(page, "rollouts")
    finally:
        device.close()

    # Offline again, live.
    go(page, f"/devices/{dev_id}", f"Device {dev_id} offline")  # heading includes the badge text

    # Bulk import: the progress bar ends at 100 % and the bad row is reported with its line.
    good, bad = unique("imp"), "bad id with spaces"
    csv = f"id,name,groups\n{good},Imported,boilers\n{bad},Broken,boilers\n".encode()
    go(page, "/devices", "Devices")
    imp = page.get_by_role("form", name="Bulk import")
    imp.get_by_label("File (CSV with a header, or JSON lines)").set_input_files(
        {"name": "devices.csv", "mimeType": "text/csv", "buffer": csv})
    imp.get_by_role("button", name="Import").click()
    expect(imp.locator(".import-summary")).to_have_text("Imported 1, updated 0, failed 1.")
    expect(imp.get_by_role("progressbar", name="Upload progress")).to_have_attribute("value", "100")
    failed = imp.get_by_role("row").filter(has=page.get_by_role("cell", name="3", exact=True))
    expect(failed).to_have_count(1)
    assert api.call("GET", f"/api/v1/devices/{good}")[0] == 200
    shot(page, "devices-import")

    # Delete through the dialog: Cancel keeps the device, Confirm deletes it.
    page.get_by_role("search", name="Search devices").get_by_label("Search", exact=True).fill(good)
    page.get_by_role("button", name="Search", exact=True).click()
    row = page.get_by_role("row").filter(has_text=good)
    row.get_by_role("button", name="Delete").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"Delete device {good}?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert api.call("GET", f"/api/v1/devices/{good}")[0] == 200
    row.get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete").click()
    assert wait_until(lambda: api.call("GET", f"/api/v1/devices/{good}")[0] == 404, 10)
    expect(page.get_by_role("row").filter(has_text=good)).to_have_count(0)

    # Retained messages by prefix; delete one through the dialog.
    go(page, "/retained", "Retained messages")
    page.get_by_label("Topic prefix", exact=True).fill(f"devices/{dev_id}/")
    page.get_by_role("button", name="Show").click()
    row = page.get_by_role("row").filter(has_text=f"devices/{dev_id}/status")
    expect(row).to_contain_text('{"fw": "1.0.0"}')
    shot(page, "retained")
    row.get_by_role("button", name="Delete").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert api.ok("GET", f"/api/v1/retained?prefix=devices/{dev_id}/")["items"] == []

    # Every other page renders (screenshots), the overview last, with its charts.
    api.ok("POST", "/api/v1/apps", {"id": unique("app"), "publish": ["data/#"], "subscribe": ["cmd/#"],
                                    "password": "app-pw-123"}, expect=201)
    for hash_path, heading, name in [("/commands", "Commands and batches", "commands"),
                                     ("/apps", "Apps and ACLs", "apps"),
                                     ("/users", "Users", "users"),
                                     ("/audit", "Audit log", "audit"),
                                     ("/account", "My account", "account")]:
        go(page, hash_path, heading)
        expect(page.locator(".error:visible")).to_have_count(0)
        shot(page, name)
    # My account: a token made on the page (shown once) works as a bearer token for this user.
    tok_form = page.get_by_role("form", name=f"New token for {ADMIN}")
    tok_form.get_by_label("Token name").fill("ci-token")
    tok_form.get_by_role("button", name="Create token").click()
    secret = page.locator("#secret-value")
    expect(secret).to_contain_text("myr_")
    token = secret.inner_text().strip()
    page.locator("#secret-dialog").get_by_role("button", name="Done").click()
    expect(page.get_by_role("cell", name="ci-token")).to_be_visible()
    me = Api(server.api_port, token).ok("GET", "/api/v1/session")
    assert (me["username"], me["role"], me["via"]) == (ADMIN, "admin", "token")
    # Users: an operator made with the form can log in with the password given.
    go(page, "/users", "Users")
    uform = page.get_by_role("form", name="Create a user")
    uform.get_by_label("Username").fill("olga")
    uform.get_by_label("Role").select_option("operator")
    uform.get_by_label("Password (8 to 256 bytes; empty: generate one)").fill("olga-password-1")
    uform.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("row").filter(has_text="olga")).to_contain_text("enabled")
    status, body = api.call("POST", "/api/v1/login", {"username": "olga", "password": "olga-password-1"}, token=None)
    assert status == 200 and body["role"] == "operator", (status, body)
    go(page, "/audit", "Audit log")
    expect(page.get_by_role("cell", name=f"POST /api/v1/devices/{dev_id}/commands").first).to_be_visible()
    go(page, "/overview", "Overview")
    expect(page.locator(".stat[data-key=online] .stat-value")).to_contain_text("/")
    expect(page.locator(".charts canvas").first).to_be_visible()
    shot(page, "overview")
    # A phone-sized window: the same page without horizontal scrolling of the body.
    page.set_viewport_size({"width": 390, "height": 844})
    go(page, f"/devices/{dev_id}", f"Device {dev_id} offline")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "device-phone")
    # Log out: back to the form, and the cookie no longer opens the API.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Myriad console")).to_be_visible()
    assert page.evaluate("async () => (await fetch('/api/v1/session', {credentials: 'same-origin'})).status") == 401
    assert problems.unexpected() == [], problems.items
    ctx.close()


@pytest.mark.timeout(120)
def test_viewer_has_no_state_changing_buttons_and_the_api_refuses(server, api, users, browser):
    from playwright.sync_api import expect

    dev_id, _ = api.create_device("view")
    ctx, page, problems = new_page(browser, server)
    login(page, VIEWER, VIEWER_PW, keyboard=True)
    expect(page.get_by_role("link", name="Users")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    forbidden = ["Create", "Delete", "Disable", "Enable", "Kick", "Rotate", "Send", "Import", "Upload",
                 "Pause", "Resume", "Cancel", "Edit"]
    pages = [("/devices", "Devices"), (f"/devices/{dev_id}", None), ("/commands", "Commands and batches"),
             ("/rollouts", "OTA rollouts"), ("/retained", "Retained messages"), ("/apps", "Apps and ACLs")]
    for hash_path, heading in pages:
        page.goto(f"/console/#{hash_path}")
        if heading:
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        else:
            expect(page.locator("#presence-badge")).to_be_visible()
        page.wait_for_load_state("networkidle")
        names = page.locator("main button").all_inner_texts()
        bad = [n for n in names if any(n.startswith(word) for word in forbidden)]
        assert bad == [], f"{hash_path}: a viewer sees {bad}"
        expect(page.locator("main form[aria-label^='Create'], main form[aria-label^='Send'], "
                            "main form[aria-label='Bulk import'], main #shadow-editor")).to_have_count(0)
        shot(page, "viewer-" + ("device" if heading is None else hash_path.strip("/")))
    # The page's own cookie and CSRF token: the server refuses every state change with 403.
    results = page.evaluate(
        """async (dev) => {
            const s = await (await fetch('/api/v1/session', {credentials: 'same-origin'})).json();
            const call = async (method, path, body) => {
                const r = await fetch(path, {method, credentials: 'same-origin',
                    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token},
                    body: body === undefined ? undefined : JSON.stringify(body)});
                return [method + ' ' + path, r.status, (await r.json()).message];
            };
            return [s.role, s.csrf_token.length > 0, [
                await call('POST', '/api/v1/devices', {id: 'viewer-made'}),
                await call('PATCH', `/api/v1/devices/${dev}`, {enabled: false}),
                await call('DELETE', `/api/v1/devices/${dev}`),
                await call('PATCH', `/api/v1/devices/${dev}/shadow`, {desired: {a: 1}}),
                await call('POST', `/api/v1/devices/${dev}/commands`, {name: 'reboot'}),
                await call('POST', '/api/v1/users', {username: 'mallory', role: 'admin', password: 'mallory-pw-1'}),
            ]];
        }""", dev_id)
    role, has_csrf, calls = results
    assert role == "viewer" and has_csrf
    for what, status, message in calls:
        assert status == 403, (what, status, message)
        assert message.startswith("role viewer may not"), (what, message)
    assert api.ok("GET", f"/api/v1/devices/{dev_id}")["enabled"] is True
    assert api.call("GET", "/api/v1/devices/viewer-made")[0] == 404
    assert api.call("GET", "/api/v1/users/mallory")[0] == 404
    # Without the CSRF header the cookie alone changes nothing either.
    status = page.evaluate("""async () => (await fetch('/api/v1/logout', {method: 'POST', credentials: 'same-origin'})).status""")
    assert status == 403
    assert problems.unexpected() == [], problems.items
    ctx.close()
