"""Operator accounts against a real `myriad serve`: users and roles (one
policy table), login sessions in an HttpOnly SameSite=Strict cookie with a
CSRF token, per-user API tokens, login throttling, the audit log, restarts,
limits and `myriad ctl users`."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from helpers import Api, Broker, myriad_bin, unique, wait_until

TOKEN = "operators-test-token-0123456789"
BROKER_CONFIG = {"api": {"token": TOKEN}}
PASSWORD = "correct-horse-1"


def http(port: int, method: str, path: str, body=None, headers: dict | None = None,
         raw: bytes | None = None) -> tuple[int, dict, object]:
    """One request; (status, lower-cased headers, parsed JSON or None)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text.decode(errors="replace")
        return e.code, {k.lower(): v for k, v in e.headers.items()}, parsed


class Session:
    """A browser-like caller: logs in, keeps the cookie, sends the CSRF token."""

    def __init__(self, port: int, username: str, password: str = PASSWORD):
        self.port = port
        status, headers, body = http(port, "POST", "/api/v1/login", {"username": username, "password": password})
        assert status == 200, (status, body)
        self.set_cookie = headers["set-cookie"]
        self.cookie = self.set_cookie.split(";")[0]
        self.csrf = body["csrf_token"]
        self.body = body

    def call(self, method: str, path: str, body=None, csrf: str | None = "default", raw: bytes | None = None):
        headers = {"Cookie": self.cookie}
        token = self.csrf if csrf == "default" else csrf
        if token is not None:
            headers["X-CSRF-Token"] = token
        return http(self.port, method, path, body, headers, raw)


def bearer(port: int, token: str, method: str, path: str, body=None):
    return http(port, method, path, body, {"Authorization": f"Bearer {token}"})


def make_user(api: Api, role: str, prefix: str | None = None) -> str:
    name = unique(prefix or role)
    api.ok("POST", "/api/v1/users", {"username": name, "role": role, "password": PASSWORD}, expect=201)
    return name


def audit(api: Api, **query) -> list[dict]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return api.ok("GET", f"/api/v1/audit?{qs}")["items"]


@pytest.fixture(scope="module")
def api(broker) -> Api:
    assert wait_until(lambda: broker.api_port is not None, 10)
    return Api(broker.api_port, TOKEN)


# ---- roles


def test_role_matrix_over_sessions_and_tokens(broker, api):
    port = broker.api_port
    users = {role: make_user(api, role) for role in ("viewer", "operator", "admin")}
    sessions = {role: Session(port, name) for role, name in users.items()}
    victim = make_user(api, "viewer", "victim")

    def matrix(role: str) -> list[tuple[str, str, object, set[str]]]:
        """(method, path, body, roles allowed) — allowed roles must not get 403."""
        dev = unique(f"m-{role}")
        app = unique("app")
        return [
            ("GET", "/api/v1/devices", None, {"viewer", "operator", "admin"}),
            ("POST", "/api/v1/devices", {"id": dev, "password": "dev-pw-123"}, {"operator", "admin"}),
            ("PATCH", f"/api/v1/devices/{dev}", {"name": "x"}, {"operator", "admin"}),
            ("POST", f"/api/v1/devices/{dev}/commands", {"name": "reboot"}, {"operator", "admin"}),
            ("PATCH", f"/api/v1/devices/{dev}/shadow", {"desired": {"a": 1}}, {"operator", "admin"}),
            ("DELETE", f"/api/v1/devices/{dev}", None, {"operator", "admin"}),
            ("GET", "/api/v1/ota/rollouts", None, {"viewer", "operator", "admin"}),
            ("POST", "/api/v1/ota/rollouts", {"artifact": "nope", "targets": {"devices": ["x"]}},
             {"operator", "admin"}),
            ("POST", "/api/v1/ota/rollouts/nope/pause", None, {"operator", "admin"}),
            ("GET", "/api/v1/apps", None, {"viewer", "operator", "admin"}),
            ("POST", "/api/v1/apps", {"id": app, "password": "app-pw-123"}, {"admin"}),
            ("DELETE", f"/api/v1/apps/{app}", None, {"admin"}),
            ("GET", "/api/v1/users", None, {"admin"}),
            ("GET", f"/api/v1/users/{victim}", None, {"admin"}),
            ("GET", f"/api/v1/users/{users[role]}", None, {"viewer", "operator", "admin"}),
            ("PATCH", f"/api/v1/users/{victim}", {"role": "viewer"}, {"admin"}),
            ("GET", f"/api/v1/users/{victim}/tokens", None, {"admin"}),
            ("GET", "/api/v1/audit", None, {"admin"}),
            ("POST", "/api/v1/tls/reload", None, {"admin"}),
        ]

    expected_success = {"GET": (200,), "POST": (200, 201, 202), "PATCH": (200,), "DELETE": (204,)}
    for role, session in sessions.items():
        for method, path, body, allowed in matrix(role):
            status, _, answer = session.call(method, path, body)
            if role in allowed:
                assert status != 403, (role, method, path, answer)
                if "nope" not in path and "rollouts" not in path and "tls" not in path:
                    assert status in expected_success[method], (role, method, path, status, answer)
            else:
                assert status == 403, (role, method, path, status, answer)
                assert answer["message"] == f"role {role} may not {method} {path}", answer
    # A refused change changed nothing: the viewer's device does not exist.
    listed = api.ok("GET", "/api/v1/devices?prefix=m-viewer")
    assert listed["items"] == []
    # The same rules hold for the users' API tokens.
    for role, session in sessions.items():
        status, _, created = session.call("POST", f"/api/v1/users/{users[role]}/tokens", {"name": "matrix"})
        assert status == 201, created
        token = created["token"]
        status, _, who = bearer(port, token, "GET", "/api/v1/session")
        assert (status, who["username"], who["role"], who["via"], who["csrf_token"]) == \
            (200, users[role], role, "token", "")
        status, _, _ = bearer(port, token, "POST", "/api/v1/devices", {"id": unique(f"t-{role}")})
        assert (status == 403) == (role == "viewer"), (role, status)
        status, _, _ = bearer(port, token, "GET", "/api/v1/audit")
        assert (status == 403) == (role != "admin"), (role, status)


# ---- login, cookie, CSRF


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(broker, api):
    port = broker.api_port
    name = make_user(api, "operator")
    s = Session(port, name)
    flags = [part.strip() for part in s.set_cookie.split(";")]
    assert flags[0].startswith("myriad_session=") and len(flags[0]) > len("myriad_session=") + 40
    assert "HttpOnly" in flags and "SameSite=Strict" in flags and "Path=/" in flags
    assert "Secure" not in flags  # plain HTTP here; tests/test_api_tls.py covers TLS
    assert s.body["username"] == name and s.body["role"] == "operator"
    assert s.body["expires_ms"] > time.time() * 1000 + 11 * 3600 * 1000
    status, _, who = s.call("GET", "/api/v1/session", csrf=None)
    assert status == 200 and who["via"] == "session" and who["csrf_token"] == s.csrf
    # Wrong name and wrong password get the same answer.
    for body in ({"username": name, "password": "wrong-password"},
                 {"username": unique("nobody"), "password": PASSWORD}):
        status, _, answer = http(port, "POST", "/api/v1/login", body)
        assert (status, answer["message"]) == (401, "wrong username or password")
    # Logout needs the CSRF token too (it changes state).
    status, _, answer = s.call("POST", "/api/v1/logout", csrf=None)
    assert (status, answer["message"]) == (403, "missing or wrong CSRF token")
    status, headers, _ = s.call("POST", "/api/v1/logout")
    assert status == 204
    assert headers["set-cookie"].startswith("myriad_session=;") and "Max-Age=0" in headers["set-cookie"]
    status, _, _ = s.call("GET", "/api/v1/session", csrf=None)
    assert status == 401, "the session is deleted server-side"


def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(broker, api):
    port = broker.api_port
    s = Session(port, make_user(api, "admin"))
    other = Session(port, make_user(api, "admin"))
    dev = unique("csrf")
    for csrf in (None, "", "wrong", other.csrf):
        status, _, answer = s.call("POST", "/api/v1/devices", {"id": dev}, csrf=csrf)
        assert (status, answer["message"]) == (403, "missing or wrong CSRF token"), (csrf, answer)
        status, _, _ = s.call("DELETE", f"/api/v1/users/{other.body['username']}", csrf=csrf)
        assert status == 403
    assert api.call("GET", f"/api/v1/devices/{dev}")[0] == 404
    assert api.call("GET", f"/api/v1/users/{other.body['username']}")[0] == 200
    # GETs need no CSRF token; the right one lets the change through.
    assert s.call("GET", "/api/v1/devices", csrf=None)[0] == 200
    assert s.call("POST", "/api/v1/devices", {"id": dev})[0] == 201
    # Bearer callers need none.
    assert api.call("DELETE", f"/api/v1/devices/{dev}")[0] == 204


def test_sessions_per_user_are_capped_oldest_ended(broker, api):
    port = broker.api_port
    name = make_user(api, "viewer")
    first = Session(port, name)
    later = [Session(port, name) for _ in range(16)]
    assert first.call("GET", "/api/v1/session")[0] == 401, "the 17th session ends the oldest"
    assert all(s.call("GET", "/api/v1/session")[0] == 200 for s in later)


# ---- users


def test_user_input_limits(broker, api):
    def create(username, role="viewer", password=PASSWORD):
        return api.call("POST", "/api/v1/users", {"username": username, "role": role, "password": password})

    base = unique("lim")
    assert create(base + "a" * (64 - len(base)))[0] == 201
    assert create(base + "b" * (65 - len(base)))[0] == 400
    for bad in ("", "has space", "bootstrap", "ünicode"):
        assert create(bad)[0] == 400, bad
    assert create(unique("p"), password="x" * 7)[0] == 400
    assert create(unique("p"), password="x" * 8)[0] == 201
    assert create(unique("p"), password="x" * 256)[0] == 201
    assert create(unique("p"), password="x" * 257)[0] == 400
    status, answer = create(unique("p"), role="root")
    assert status == 400 and "role" in answer["message"]
    dup = make_user(api, "viewer")
    assert create(dup)[0] == 409
    status, answer = api.call("POST", "/api/v1/users", {"username": unique("x"), "role": "viewer",
                                                        "password": PASSWORD, "admin": True})
    assert status == 400, "unknown fields are refused"
    # Login bodies are JSON bodies: 1 MiB at most.
    status, _, _ = http(broker.api_port, "POST", "/api/v1/login",
                        raw=json.dumps({"username": "a", "password": "x" * (1024 * 1024)}).encode())
    assert status == 413
    # Paging.
    page = api.ok("GET", "/api/v1/users?limit=2")
    assert len(page["items"]) == 2 and page["next"] == page["items"][1]["username"]
    nxt = api.ok("GET", f"/api/v1/users?limit=2&after={page['next']}")
    assert nxt["items"][0]["username"] > page["next"]
    assert api.call("GET", "/api/v1/users?limit=1001")[0] == 400


def test_passwords_own_and_admin(broker, api):
    port = broker.api_port
    name = make_user(api, "viewer")
    s = Session(port, name)
    other = make_user(api, "viewer")
    path = f"/api/v1/users/{name}/password"
    assert s.call("PUT", path, {"password": "new-password-1"})[0] == 400, "own change needs the current password"
    assert s.call("PUT", path, {"current_password": "wrong-one", "password": "new-password-1"})[0] == 403
    assert s.call("PUT", f"/api/v1/users/{other}/password", {"current_password": PASSWORD,
                                                              "password": "new-password-1"})[0] == 403
    assert s.call("PUT", path, {"current_password": PASSWORD, "password": "new-password-1"})[0] == 204
    assert s.call("GET", "/api/v1/session")[0] == 401, "a new password ends the user's sessions"
    s2 = Session(port, name, "new-password-1")
    assert api.call("PUT", path, {"password": "admin-set-pw-1"})[0] == 204
    assert s2.call("GET", "/api/v1/session")[0] == 401
    Session(port, name, "admin-set-pw-1")


def test_wrong_current_passwords_are_throttled_like_logins(broker, api):
    name = make_user(api, "viewer")
    s = Session(broker.api_port, name)
    path = f"/api/v1/users/{name}/password"
    for _ in range(5):
        assert s.call("PUT", path, {"current_password": "guess-guess", "password": "new-password-1"})[0] == 403
    status, headers, answer = s.call("PUT", path, {"current_password": PASSWORD, "password": "new-password-1"})
    assert status == 429 and headers["retry-after"] == "1", answer
    status, _, _ = http(broker.api_port, "POST", "/api/v1/login", {"username": name, "password": PASSWORD})
    assert status == 429, "the user name is locked for logins too"


def test_disabling_a_user_ends_its_session_and_tokens(broker, api):
    port = broker.api_port
    name = make_user(api, "operator")
    s = Session(port, name)
    status, _, created = s.call("POST", f"/api/v1/users/{name}/tokens", {"name": "ci"})
    assert status == 201
    api.ok("PATCH", f"/api/v1/users/{name}", {"disabled": True})
    assert s.call("GET", "/api/v1/session")[0] == 401
    assert bearer(port, created["token"], "GET", "/api/v1/session")[0] == 401
    status, _, _ = http(port, "POST", "/api/v1/login", {"username": name, "password": PASSWORD})
    assert status == 401
    user = api.ok("PATCH", f"/api/v1/users/{name}", {"disabled": False})
    assert user["disabled"] is False
    Session(port, name)
    assert bearer(port, created["token"], "GET", "/api/v1/session")[0] == 200
    # Deleting deletes its tokens.
    assert api.call("DELETE", f"/api/v1/users/{name}")[0] == 204
    assert bearer(port, created["token"], "GET", "/api/v1/session")[0] == 401
    assert api.call("GET", f"/api/v1/users/{name}")[0] == 404


# ---- tokens


def test_user_tokens_create_list_use_revoke(broker, api):
    port = broker.api_port
    name = make_user(api, "viewer")
    s = Session(port, name)
    status, _, created = s.call("POST", f"/api/v1/users/{name}/tokens", {"name": "laptop"})
    assert status == 201 and created["token"].startswith("myr_") and created["name"] == "laptop"
    assert len(created["token"]) == 4 + 43
    assert bearer(port, created["token"], "GET", "/api/v1/devices")[0] == 200
    status, _, listed = s.call("GET", f"/api/v1/users/{name}/tokens")
    assert status == 200
    [item] = listed["items"]
    assert item["id"] == created["id"] and item["last_used_ms"] is not None and "token" not in item
    # A token is a bearer token: no CSRF needed; a wrong one is 401.
    assert bearer(port, created["token"] + "x", "GET", "/api/v1/devices")[0] == 401
    assert bearer(port, "myr_" + "A" * 43, "GET", "/api/v1/devices")[0] == 401
    status, _, _ = s.call("DELETE", f"/api/v1/users/{name}/tokens/{created['id']}")
    assert status == 204
    assert bearer(port, created["token"], "GET", "/api/v1/devices")[0] == 401
    assert s.call("DELETE", f"/api/v1/users/{name}/tokens/{created['id']}")[0] == 404
    # Limits: the name, and 32 tokens per user.
    assert s.call("POST", f"/api/v1/users/{name}/tokens", {"name": "n" * 65})[0] == 400
    assert s.call("POST", f"/api/v1/users/{name}/tokens", {"name": ""})[0] == 400
    for n in range(32):
        assert s.call("POST", f"/api/v1/users/{name}/tokens", {"name": "n" * 64})[0] == 201, n
    status, _, answer = s.call("POST", f"/api/v1/users/{name}/tokens", {"name": "one-too-many"})
    assert status == 409 and "32" in answer["message"]


def test_influx_writes_take_user_tokens_of_admins_only(broker, api):
    port = broker.api_port
    tokens = {}
    for role in ("operator", "admin"):
        name = make_user(api, role)
        tokens[role] = api.ok("POST", f"/api/v1/users/{name}/tokens", {"name": "influx"}, expect=201)["token"]
    line = b"cpu,device=x value=1\n"
    for role, token in tokens.items():
        for auth in (f"Token {token}", f"Bearer {token}"):
            status, _, _ = http(port, "POST", "/api/v2/write?bucket=b", raw=line,
                                headers={"Authorization": auth, "Content-Type": "text/plain"})
            assert status != 401, (role, auth)
            assert (status == 403) == (role == "operator"), (role, auth, status)
    status, _, _ = http(port, "POST", "/api/v2/write?bucket=b", raw=line,
                        headers={"Authorization": "Token myr_wrong", "Content-Type": "text/plain"})
    assert status == 401
    # Data-plane ingest is not audited (it would flush operator actions out of the capped log).
    assert not [e for e in audit(api, limit=1000) if e["path"] == "/api/v2/write"]


# ---- audit


def test_audit_records_who_what_status_and_where(broker, api):
    port = broker.api_port
    name = make_user(api, "operator")
    s = Session(port, name)
    dev = unique("aud")
    assert s.call("POST", "/api/v1/devices", {"id": dev})[0] == 201
    assert s.call("POST", "/api/v1/apps", {"id": unique("a"), "password": "app-pw-123"})[0] == 403
    assert s.call("DELETE", f"/api/v1/devices/{dev}", csrf="wrong")[0] == 403
    assert s.call("GET", "/api/v1/devices")[0] == 200
    http(port, "POST", "/api/v1/login", {"username": name, "password": "wrong-password"})
    s.call("POST", "/api/v1/logout")
    entries = audit(api, actor=name)
    got = [(e["method"], e["path"], e["status"], e["via"]) for e in reversed(entries)]
    assert got == [
        ("POST", "/api/v1/login", 200, "password"),
        ("POST", "/api/v1/devices", 201, "session"),
        ("POST", "/api/v1/apps", 403, "session"),
        ("DELETE", f"/api/v1/devices/{dev}", 403, "session"),
        ("POST", "/api/v1/login", 401, "password"),
        ("POST", "/api/v1/logout", 204, "session"),
    ], got
    for e in entries:
        assert e["actor"] == name and e["remote"].startswith("127.0.0.1:")
        assert e["at_ms"] > (time.time() - 60) * 1000
    assert entries[0]["seq"] > entries[-1]["seq"]
    assert {e["role"] for e in entries if e["status"] != 401} == {"operator"}
    # Bootstrap actions are audited under "bootstrap"; GETs are not audited.
    assert any(e["path"] == "/api/v1/users" and e["via"] == "bootstrap" for e in audit(api, actor="bootstrap"))
    # Paging with the `before` cursor.
    page = api.ok("GET", "/api/v1/audit?limit=2")
    older = api.ok("GET", f"/api/v1/audit?limit=2&before={page['next']}")
    assert older["items"][0]["seq"] < page["items"][-1]["seq"]


# ---- throttling


def test_login_throttling_per_user_and_per_address(broker_factory):
    b = broker_factory({"api": {"token": TOKEN, "login_max_failures": 3}})
    assert wait_until(lambda: b.api_port is not None, 10)
    api, port = Api(b.api_port, TOKEN), b.api_port
    name = make_user(api, "viewer")

    def login(user, password):
        return http(port, "POST", "/api/v1/login", {"username": user, "password": password})

    for _ in range(3):
        assert login(name, "wrong-password")[0] == 401
    status, headers, answer = login(name, PASSWORD)
    assert status == 429, "locked out even with the right password"
    assert headers["retry-after"] == "1" and answer["message"] == "too many failed logins; retry in 1 s"
    time.sleep(1.1)
    assert login(name, "wrong-password")[0] == 401
    status, headers, _ = login(name, PASSWORD)
    assert status == 429 and headers["retry-after"] == "2", "the lockout doubles"
    time.sleep(2.1)
    assert login(name, PASSWORD)[0] == 200, "a success resets the user's count"
    assert login(name, "wrong-password")[0] == 401
    assert login(name, PASSWORD)[0] == 200
    # The address: 4 x 3 = 12 failures from 127.0.0.1 lock out every user from it.
    # (So far 5 failures from this address.)
    other = make_user(api, "viewer")
    for n in range(7):
        assert login(unique("ghost"), "wrong-password")[0] == 401, n
    status, headers, _ = login(other, PASSWORD)
    assert status == 429 and int(headers["retry-after"]) >= 1
    # Throttled attempts are not audited; failed ones are.
    failed = [e for e in audit(api, limit=100) if e["path"] == "/api/v1/login" and e["status"] == 401]
    assert len(failed) == 12
    assert {e["actor"] for e in failed if not e["actor"].startswith("ghost")} == {name}


def test_password_checks_share_the_bounded_argon2_slots(broker_factory):
    """With one check slot and no queue, simultaneous logins past the one being
    hashed are answered 503 at once (no Argon2, not counted as failures)."""
    import threading

    b = broker_factory({"api": {"token": TOKEN},
                        "auth": {"max_concurrent_password_checks": 1, "password_check_queue": 0}})
    assert wait_until(lambda: b.api_port is not None, 10)
    api, port = Api(b.api_port, TOKEN), b.api_port
    name = make_user(api, "viewer")
    results: list[tuple[int, object]] = []
    start = threading.Barrier(16)

    def attempt() -> None:
        start.wait()
        status, _, body = http(port, "POST", "/api/v1/login", {"username": name, "password": PASSWORD})
        results.append((status, body))

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(status for status, _ in results)
    assert len(statuses) == 16 and set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    busy = [body for status, body in results if status == 503]
    assert busy[0]["message"] == "too many password checks at once; retry later"
    # Busy answers are not failures: the user is not locked out.
    assert http(port, "POST", "/api/v1/login", {"username": name, "password": PASSWORD})[0] == 200


# ---- restart, cap


def test_restart_keeps_users_sessions_tokens_and_audit(broker_factory, tmp_path):
    config = {"api": {"token": TOKEN}}
    b = broker_factory(config)
    assert wait_until(lambda: b.api_port is not None, 10)
    api = Api(b.api_port, TOKEN)
    name = make_user(api, "operator")
    s = Session(b.api_port, name)
    token = api.ok("POST", f"/api/v1/users/{name}/tokens", {"name": "keep"}, expect=201)["token"]
    before = audit(api)
    workdir = b.workdir
    b.stop()
    b2 = Broker(workdir, config).start()
    try:
        assert wait_until(lambda: b2.api_port is not None, 10)
        api2 = Api(b2.api_port, TOKEN)
        s.port = b2.api_port
        status, _, who = s.call("GET", "/api/v1/session")
        assert status == 200 and who["username"] == name and who["csrf_token"] == s.csrf
        assert s.call("POST", "/api/v1/devices", {"id": unique("after")})[0] == 201
        assert bearer(b2.api_port, token, "GET", "/api/v1/session")[1:] and \
            bearer(b2.api_port, token, "GET", "/api/v1/session")[0] == 200
        user = api2.ok("GET", f"/api/v1/users/{name}")
        assert user["role"] == "operator" and user["last_login_ms"] is not None
        after = audit(api2)
        assert [e["seq"] for e in after[-len(before):]] == [e["seq"] for e in before]
        assert after[0]["seq"] > before[0]["seq"]
    finally:
        b2.stop()


def test_audit_cap_trims_the_oldest(broker_factory):
    b = broker_factory({"api": {"token": TOKEN, "audit_max_entries": 100}})
    assert wait_until(lambda: b.api_port is not None, 10)
    api = Api(b.api_port, TOKEN)
    for n in range(130):
        assert api.call("DELETE", f"/api/v1/devices/{unique('none')}")[0] == 404
    items = []
    cursor = ""
    while True:
        page = api.ok("GET", f"/api/v1/audit?limit=30{cursor}")
        items += page["items"]
        if page["next"] is None:
            break
        cursor = f"&before={page['next']}"
    seqs = [e["seq"] for e in items]
    assert len(seqs) == 100 and seqs == list(range(130, 30, -1)), seqs[:3] + seqs[-3:]


def test_bad_account_config_stops_start_up_naming_the_key(tmp_path):
    for key, value in (("session_ttl_secs", 59), ("audit_max_entries", 99), ("login_max_failures", 0)):
        b = Broker(tmp_path / key, {"api": {"token": TOKEN, key: value}})
        with pytest.raises(RuntimeError):
            b.start()
        log = b.log_path.read_text()
        assert f"invalid value for api.{key}" in log, log[:400]


# ---- ctl


def test_ctl_users_and_audit_round_trip(broker, api):
    port = broker.api_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYRIAD_")}
    env["MYRIAD_API"] = f"http://127.0.0.1:{port}"
    env["MYRIAD_API_TOKEN"] = TOKEN

    def ctl(*args: str, stdin: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(myriad_bin()), "ctl", "--output", "json", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=60)
        if ok:
            assert proc.returncode == 0, (args, proc.stderr)
        return proc

    name = unique("ctl")
    added = json.loads(ctl("users", "add", name, "--role", "operator", "--password-stdin",
                           stdin=PASSWORD + "\n").stdout)
    assert (added["username"], added["role"], added["disabled"]) == (name, "operator", False)
    assert name in [u["username"] for u in json.loads(ctl("users", "list").stdout)["items"]]
    assert json.loads(ctl("users", "set-role", name, "viewer").stdout)["role"] == "viewer"
    s = Session(port, name)
    assert s.call("GET", "/api/v1/session")[2]["role"] == "viewer"
    assert json.loads(ctl("users", "disable", name).stdout)["disabled"] is True
    assert s.call("GET", "/api/v1/session")[0] == 401
    ctl("users", "enable", name)
    ctl("users", "set-password", name, "--password-stdin", stdin="new-password-2\n")
    Session(port, name, "new-password-2")
    created = json.loads(ctl("users", "token-add", name, "ci").stdout)
    assert created["token"].startswith("myr_")
    assert bearer(port, created["token"], "GET", "/api/v1/session")[2]["username"] == name
    [listed] = json.loads(ctl("users", "tokens", name).stdout)["items"]
    assert listed["id"] == created["id"] and listed["name"] == "ci"
    ctl("users", "token-revoke", name, created["id"])
    assert bearer(port, created["token"], "GET", "/api/v1/session")[0] == 401
    entries = json.loads(ctl("audit", "--actor", "bootstrap", "--limit", "3").stdout)["items"]
    assert len(entries) == 3
    assert (entries[0]["method"], entries[0]["path"], entries[0]["status"]) == \
        ("DELETE", f"/api/v1/users/{name}/tokens/{created['id']}", 204)
    # Without --output json the lists are tables.
    table = subprocess.run([str(myriad_bin()), "ctl", "audit", "--limit", "2"], capture_output=True,
                           text=True, env=env, timeout=60)
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and lines[0].split()[:3] == ["SEQ", "AT_MS", "ACTOR"] and len(lines) == 3, lines
    table = subprocess.run([str(myriad_bin()), "ctl", "users", "list"], capture_output=True, text=True,
                           env=env, timeout=60)
    row = next(line for line in table.stdout.splitlines() if line.startswith(name + " "))
    assert row.split()[1:3] == ["viewer", "false"], row
    ctl("users", "delete", name)
    assert api.call("GET", f"/api/v1/users/{name}")[0] == 404
    bad = ctl("users", "add", unique("x"), "--role", "root", "--password-stdin", stdin=PASSWORD, ok=False)
    assert bad.returncode == 1 and "400" in bad.stderr and "role" in bad.stderr


def test_session_cookie_is_secure_over_tls(broker_factory, tmp_path):
    from test_api_tls import api_tls_config, api_tls_port
    from test_api_tls import TOKEN as TLS_TOKEN
    from test_tls import context, make_certs

    certs = make_certs(tmp_path / "pki")
    b = broker_factory(raw_config=api_tls_config(certs))
    port = api_tls_port(b)
    ctx = context(certs)

    def call(path: str, body: dict, headers: dict) -> tuple[int, dict]:
        req = urllib.request.Request(f"https://localhost:{port}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json", **headers})
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}

    name = unique("tls")
    status, _ = call("/api/v1/users", {"username": name, "role": "viewer", "password": PASSWORD},
                     {"Authorization": f"Bearer {TLS_TOKEN}"})
    assert status == 201
    status, headers = call("/api/v1/login", {"username": name, "password": PASSWORD}, {})
    flags = [part.strip() for part in headers["set-cookie"].split(";")]
    assert status == 200 and "Secure" in flags and "HttpOnly" in flags and "SameSite=Strict" in flags
