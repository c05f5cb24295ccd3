#!/usr/bin/env python3
"""Random hostile requests against a running samvault, as a new attacker would try them.

    python3 scripts/probe.py PORT CLIENT_ID CLIENT_SECRET [SEED] [REQUESTS]

Every route, every method, path tricks, invalid UTF-8, oversized bodies, broken Basic
credentials, forged cookies, hostile Host headers, XSS/SQL/template payloads in query
parameters, sent over raw sockets (no client library "fixes" the bytes) from a loopback
address of their own; first, 40 dashboard sign-ins with a valid CSRF token, hostile
credentials and forged X-Forwarded-For headers, which must end throttled (429 with
Retry-After), and 40 onboarding sign-in starts and 10 forged callbacks from another address,
which must end throttled past SAMVAULT_ONBOARD_RATE (429 with Retry-After; issue 17). Fails
(exit 1) on any 5xx (a 503 from /readyz, or with Retry-After from the sign-in and password
forms, excepted), any reflected markup, or a state change: the partners
the client sees (tenant, name, domain, status, status code) must be the same afterwards and
the client must still get Contoso's token. Last, Contoso's Sales Agent consents over the
live grant through the real flow: refused (409, the holder named, UPN masked) and nothing
changes (issue 17). Prints the status mix last.
Start the demo first (`samvault demo`), and pass the client it prints; the probe consents
Contoso's admin through the real flow first if nobody has.
"""
import random
import re
import socket
import sys
import base64
import json
import os
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samload import Http, consent, consent_answer, csrf_of  # noqa: E402

HOST = "127.0.0.1"
PORT, CID, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]
SEED = int(sys.argv[4]) if len(sys.argv) > 4 else 1
REQUESTS = int(sys.argv[5]) if len(sys.argv) > 5 else 3000
CONTOSO = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01"

ROUTES = ["/healthz", "/readyz", "/metrics", "/onboard", "/onboard/callback", "/onboard/i/X",
          "/onboard/revoke", "/onboard/revoke/start", "/onboard/revoke/confirm", "/onboard/start",
          "/ops", "/ops/audit", "/ops/audit/verify", "/ops/integrations", "/ops/integrations/X/revoke",
          "/ops/integrations/X/secrets", "/ops/invitations", "/ops/invitations/X/expire", "/ops/keys",
          "/ops/partners", "/ops/partners/X", "/ops/partners/X/check", "/ops/partners/X/invite",
          "/ops/partners/X/revoke", "/ops/partners/X/rotate", "/ops/password", "/ops/security",
          "/ops/security/clients.csv", "/ops/security/requests.csv", "/ops/signin", "/ops/signout",
          "/api/v1/partners", "/api/v1/partners/X", "/api/v1/partners/X/token", "/api/openapi.json",
          "/static/samvault.css", "/static/X"]
EVIL = ["..%2f..%2fetc%2fpasswd", "%00", "<script>alert(1)</script>", "'\"><img src=x onerror=alert(1)>",
        "{{7*7}}", "${7*7}", "' OR 1=1--", "\u202e\u0000", "%ff%fe", "A" * 5000, CONTOSO + "%2f..",
        "//evil.example", "%2e%2e", "\\..\\..", "\U0001F600" * 100, "%E0%80%AF", "-1", "9" * 40,
        "null", "[]", "{}"]
BODIES = [b"", b"\xff\xfe\xfd", b"{", b'{"resource":1}',
          b'{"resource":"https://api.partnercenter.microsoft.com","purpose":"x","purpose":"y"}',
          b"a=1&a=2&csrf=x", b"csrf=&username=%00&password=", b"x" * 200000,
          json.dumps({"resource": "<script>", "purpose": "<script>"}).encode(),
          b'{"resource":"https://api.partnercenter.microsoft.com","purpose":"\\u0000"}']
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain",
                 "multipart/form-data; boundary=x", "application/json; charset=utf-16", ""]
AUTHS = [None, "Basic " + base64.b64encode(f"{CID}:{SECRET}".encode()).decode(), "Basic %%%",
         "Bearer x", "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
         "Basic " + base64.b64encode(f"{CID}:{SECRET}x".encode()).decode()]
COOKIES = [None, "id=x", "id=" + "A" * 4000, "id=%00", "samvault_session=" + "x" * 100, "id=;id=;id="]
PARAMS = ["state", "code", "error", "error_description", "q", "page", "after", "status", "redirect",
          "return", "next", "tenant", "actor", "action", "id_token", "session_state", "admin_consent"]
REFLECTED = [b"<script>alert(1)</script>", b"onerror=alert(1)"]
# The random requests come from an address of their own: the onboarding limit they meet must
# not spend the budget of the consents the probe makes from 127.0.0.1.
RANDOM_SOURCE = "127.0.9.9"


def send(method, path, headers, body, source=None):
    request = f"{method} ".encode() + path.encode() + b" HTTP/1.1\r\n"
    for name, value in headers.items():
        request += name.encode() + b": " + value.encode() + b"\r\n"
    request += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    with socket.create_connection((HOST, PORT), timeout=10,
                                  source_address=(source, 0) if source else None) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may close early on an oversized body; read what it said
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
    return data


def api_get(path):
    auth = "Basic " + base64.b64encode(f"{CID}:{SECRET}".encode()).decode()
    data = send("GET", path, {"Host": f"{HOST}:{PORT}", "Authorization": auth}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body = unchunk(body)
    return json.loads(body)


def unchunk(body):
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


def partner_state():
    """What an attacker must not be able to change: every partner the client sees."""
    fields = ("tenant_id", "name", "domain", "status", "status_code", "consented_at")
    return sorted(tuple(p.get(f) for f in fields) for p in api_get("/api/v1/partners?limit=1000")["partners"])


def token_status():
    auth = "Basic " + base64.b64encode(f"{CID}:{SECRET}".encode()).decode()
    body = json.dumps({"resource": "https://api.partnercenter.microsoft.com", "purpose": "probe"}).encode()
    data = send("POST", f"/api/v1/partners/{CONTOSO}/token",
                {"Host": f"{HOST}:{PORT}", "Authorization": auth, "Content-Type": "application/json"}, body)
    return int(re.match(rb"HTTP/1.1 (\d+)", data).group(1))


def head_and_body(data):
    """(status, lower-case header dict, body) of a raw answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        body = unchunk(body)
    return int(lines[0].split()[1]), headers, body


def sign_in_phase(rng, bad, statuses):
    """The dashboard sign-in with this session's CSRF token, so the credentials themselves are
    judged: hostile names, passwords and codes, forged X-Forwarded-For headers, 40 attempts
    from one address. Every answer must be 401, or 429 with Retry-After once the address has
    spent its failed sign-ins (a 503 only with Retry-After: the password checks are busy)."""
    status, headers, body = head_and_body(send("GET", "/ops/signin", {"Host": f"{HOST}:{PORT}"}, b""))
    cookie = headers.get("set-cookie", "").split(";")[0]
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    throttled = 0
    for _ in range(40):
        fields = {"csrf": csrf, "username": rng.choice(EVIL + ["admin", "alice"]),
                  "password": rng.choice(EVIL), "code": rng.choice(EVIL + ["000000"])}
        form = "&".join(f"{k}={quote(v)}" for k, v in fields.items()).encode()
        hdrs = {"Host": f"{HOST}:{PORT}", "Cookie": cookie,
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Forwarded-For": rng.choice(["203.0.113.9", "127.0.0.1, 10.0.0.1", "unknown", EVIL[2],
                                               "999.999.999.999", "::1", "[::1]:80"])}
        data = send("POST", "/ops/signin", hdrs, form)
        status, headers, body = head_and_body(data)
        statuses[status] = statuses.get(status, 0) + 1
        throttled += status == 429
        if status not in (401, 429, 503) or (status != 401 and "retry-after" not in headers):
            bad.append(("sign-in", status, fields["username"][:40], data[:300]))
        if any(marker in data for marker in REFLECTED):
            bad.append(("reflected markup in the sign-in page", data[:300]))
    if not throttled:
        bad.append(("40 failed sign-ins from one address and none throttled",))


def onboard_phase(bad, statuses):
    """Onboarding sign-ins from one address (127.0.5.5): 40 starts with the session's CSRF
    token, then 10 callbacks with forged codes. Every start is 303 (a sign-in started) or, once
    the address has spent SAMVAULT_ONBOARD_RATE, 429 with Retry-After; every callback a 4xx
    (429 with Retry-After past the budget); some must be refused."""
    browser = Http(f"http://{HOST}:{PORT}", source="127.0.5.5")
    try:
        _, _, page = browser.request("GET", "/onboard")
        csrf = csrf_of(page.decode())
        answers = [browser.form("/onboard/start", {"csrf": csrf}) for _ in range(40)]
        answers += [browser.request("GET", "/onboard/callback?code=forged&state=forged") for _ in range(10)]
    finally:
        browser.close()
    for i, (status, headers, page) in enumerate(answers):
        statuses[status] = statuses.get(status, 0) + 1
        expected = (303,) if i < 40 else tuple(range(400, 500))
        if status not in expected + (429,) or (status == 429 and "retry-after" not in headers):
            bad.append(("onboarding flood", i, status, page[:300]))
    if not any(status == 429 for status, _, _ in answers):
        bad.append(("50 onboarding sign-in steps from one address and none refused",))


def main():
    rng = random.Random(SEED)
    bad, statuses = [], {}
    if not any(p[0] == CONTOSO for p in partner_state()):
        ok, detail = consent(f"http://{HOST}:{PORT}", "jane@contoso.example")
        if not ok:
            sys.exit(f"could not consent Contoso first: {detail}")
    before = partner_state()
    if token_status() != 200:
        sys.exit("the client must be able to get Contoso's token (the demo's client, Partner Center)")
    sign_in_phase(rng, bad, statuses)
    onboard_phase(bad, statuses)
    for _ in range(REQUESTS):
        route = rng.choice(ROUTES)
        path = route.replace("X", rng.choice(EVIL + [CONTOSO]))
        if rng.random() < .5:
            path += "?" + "&".join(f"{rng.choice(PARAMS)}={rng.choice(EVIL)}"
                                   for _ in range(rng.randint(1, 4)))
        method = rng.choice(["GET", "POST", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
        body = rng.choice(BODIES) if method in ("POST", "PUT", "PATCH") else b""
        headers = {"Host": rng.choice(["evil.example", "", "127.0.0.1:1"]) if rng.random() < .1
                   else f"{HOST}:{PORT}"}
        for name, choices in (("Content-Type", CONTENT_TYPES), ("Authorization", AUTHS), ("Cookie", COOKIES)):
            value = rng.choice(choices)
            if value:
                headers[name] = value
        if rng.random() < .05:
            headers["Origin"] = "https://evil.example"
        data = send(method, path, headers, body, RANDOM_SOURCE)
        match = re.match(rb"HTTP/1.1 (\d+)", data)
        if not match:
            if len(body) < 100000:
                bad.append(("no response", method, path[:100]))
            continue
        status = int(match.group(1))
        statuses[status] = statuses.get(status, 0) + 1
        busy = status == 503 and (route == "/readyz" or (route in ("/ops/signin", "/ops/password")
                                                          and b"Retry-After" in data.partition(b"\r\n\r\n")[0]))
        if status >= 500 and not busy:
            bad.append((status, method, path[:120], data[:300]))
        if any(marker in data for marker in REFLECTED):
            bad.append(("reflected markup", method, path[:120], data[:300]))
    status, page = consent_answer(f"http://{HOST}:{PORT}", "sam@contoso.example")
    if status != 409 or b"held by someone else" not in page or b"jane@contoso.example" in page:
        bad.append(("a Sales Agent's consent over Contoso's live grant", status, page[:300]))
    after = partner_state()
    if after != before:
        bad.append(("state changed", sorted(set(before) ^ set(after))))
    if token_status() != 200:
        bad.append(("the client no longer gets Contoso's token",))
    for entry in bad[:30]:
        print(entry)
    print(f"{REQUESTS} requests, seed {SEED}: {len(bad)} bad (5xx, reflected markup, no answer or state change);"
          f" {len(after)} partners compared")
    print("status mix:", ", ".join(f"{s} × {n}" for s, n in sorted(statuses.items())))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
