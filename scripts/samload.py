#!/usr/bin/env python3
"""Load and traffic for samvault's long suites (scripts/crash-loop.sh, scripts/soak.sh).

Standard library only: threads, http.client (keep-alive), a TOTP code (RFC 6238), the real
consent flow (samvault's onboarding page -> the dev IdP's sign-in form -> the callback) and
the ops sign-in (password + TOTP, forced password change).

  samload.py consent  --sv URL --first K --count N        real consents of generated tenants
  samload.py signin   --sv URL --creds FILE               prints a signed-in ops session's Cookie
  samload.py traffic  --sv URL --auth B64 --tenants N ... token requests until --stop-file exists
  samload.py check    --sv URL --auth B64 --tenants-file F  every tenant gets a token?
  samload.py storm    --sv URL --pid PID [--admin FILE]    RSS (and a real sign-in's time) in bursts of failed sign-ins
  samload.py soak     --sv URL,URL --pids P,P ...          mixed load; prints figures, exit 1 on errors
"""

import argparse
import base64
import hashlib
import hmac
import html
import http.client
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

PARTNER_CENTER = "https://api.partnercenter.microsoft.com"
TOKEN_BODY = json.dumps({"resource": PARTNER_CENTER, "purpose": "samload"}).encode()
# Connection-level failures: the server is down (refused) or went away mid-request (dropped).
DROPPED = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
           http.client.IncompleteRead, http.client.BadStatusLine)


def tenant_id(k):
    return f"00000000-0000-4000-8000-{k:012d}"


def totp(secret, at=None):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(at or time.time()) // 30), hashlib.sha1).digest()
    offset = mac[-1] & 15
    return f"{(struct.unpack('>I', mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 10**6:06d}"


def csrf_of(page):
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    if not m:
        raise RuntimeError("no csrf field in the page")
    return m.group(1)


class Http:
    """One keep-alive connection to one origin, with a cookie jar; reconnects after a failure."""

    def __init__(self, base, timeout=30.0, source=None):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.source = (source, 0) if source else None  # a loopback address to send from
        self.conn = None
        self.cookies = {}

    def request(self, method, path, body=None, headers=None):
        """(status, headers dict with lower-case names, body bytes); raises on connection errors."""
        headers = dict(headers or {})
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout,
                                                   source_address=self.source)
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except BaseException:
            self.conn.close()
            self.conn = None
            raise
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie":
                k, _, v = value.split(";", 1)[0].partition("=")
                if v:
                    self.cookies[k.strip()] = v
                else:
                    self.cookies.pop(k.strip(), None)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def form(self, path, fields):
        return self.request("POST", path, urllib.parse.urlencode(fields),
                            {"content-type": "application/x-www-form-urlencoded"})

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


def path_of(url):
    u = urllib.parse.urlsplit(url)
    return u.path + (f"?{u.query}" if u.query else "")


def consent(sv, upn):
    """A partner admin's consent through the real flow; returns (ok, detail)."""
    status, page = consent_answer(sv, upn)
    if status != 200 or b"Consent recorded" not in page:
        return False, page.decode(errors="replace") if status is None else f"callback {status}"
    return True, ""


def consent_answer(sv, upn):
    """A consent of `upn` through the real flow: (the callback's status, its page), or
    (None, what failed before the callback)."""
    browser, idp = Http(sv), None
    try:
        status, _, page = browser.request("GET", "/onboard")
        if status != 200:
            return None, f"GET /onboard {status}".encode()
        status, headers, _ = browser.form("/onboard/start", {"csrf": csrf_of(page.decode())})
        if status != 303:
            return None, f"POST /onboard/start {status}".encode()
        authorize = headers["location"]
        idp = Http(authorize)
        fields = urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize).query)
        fields += [("upn", upn), ("mfa", "on"), ("consent", "accept")]
        status, headers, _ = idp.form(urllib.parse.urlsplit(authorize).path, fields)
        if status not in (302, 303) or "location" not in headers:
            return None, f"IdP sign-in {status}".encode()
        status, _, page = browser.request("GET", path_of(headers["location"]))
        return status, page
    finally:
        browser.close()
        if idp:
            idp.close()


def sign_in(sv, creds):
    """Signs an ops user in (password + TOTP), changes the one-time password; returns the
    session cookies, which every replica accepts (sessions live in the database)."""
    browser = Http(sv)
    _, _, page = browser.request("GET", "/ops/signin")
    fields = {"csrf": csrf_of(page.decode()), "username": creds["username"],
              "password": creds["password"], "code": totp(creds["totp_secret"])}
    status, headers, _ = browser.form("/ops/signin", fields)
    if status != 303:
        raise RuntimeError(f"ops sign-in answered {status}")
    if headers.get("location") == "/ops/password":
        _, _, page = browser.request("GET", "/ops/password")
        new = f"soak passphrase {random.getrandbits(64):x}"
        fields = {"csrf": csrf_of(page.decode()), "current": creds["password"], "new": new, "confirm": new}
        status, _, _ = browser.form("/ops/password", fields)
        if status != 303:
            raise RuntimeError(f"password change answered {status}")
    browser.close()
    return browser.cookies


def session(sv, cookies):
    conn = Http(sv)
    conn.cookies = dict(cookies)
    return conn


def bad_sign_in(conn, username):
    """A dashboard sign-in with a wrong password: the status (401, or 429 once the address has
    spent its failed sign-ins)."""
    _, _, page = conn.request("GET", "/ops/signin")
    fields = {"csrf": csrf_of(page.decode()), "username": username, "password": "not the password",
              "code": "000000"}
    return conn.form("/ops/signin", fields)[0]


def ops_rotate(conn, tenant):
    """Presses "Rotate now" on a partner's page: (status, whether the page says it worked)."""
    status, _, page = conn.request("GET", f"/ops/partners/{tenant}")
    if status != 200:
        return status, False
    status, _, _ = conn.form(f"/ops/partners/{tenant}/rotate", {"csrf": csrf_of(page.decode())})
    if status != 303:
        return status, False
    status, _, page = conn.request("GET", f"/ops/partners/{tenant}")
    return status, b"Rotated: the refresh token was redeemed" in page


def token(conn, auth, tenant):
    """(status, problem code or None, body)."""
    status, _, body = conn.request("POST", f"/api/v1/partners/{tenant}/token", TOKEN_BODY,
                                   {"authorization": f"Basic {auth}", "content-type": "application/json"})
    code = None
    if status != 200:
        try:
            code = json.loads(body).get("code")
        except ValueError:
            code = "not-json"
    return status, code, body


# ---------------------------------------------------------------- consent
def cmd_consent(a):
    failed = []
    for k in range(a.first, a.first + a.count):
        ok, detail = consent(a.sv, f"admin@tenant-{k}.example")
        if not ok:
            failed.append(f"tenant-{k}: {detail}")
    if failed:
        sys.exit("consents failed: " + "; ".join(failed))
    print(f"consented {a.count} partners (tenants {a.first}..{a.first + a.count - 1})")


def cmd_signin(a):
    cookies = sign_in(a.sv, json.load(open(a.creds)))
    print("; ".join(f"{k}={v}" for k, v in cookies.items()))


# ---------------------------------------------------------------- traffic (crash loop)
def cmd_traffic(a):
    """Token requests from THREADS threads, one new connection per request (so a connection
    error means this request met a dead server), until the stop file appears."""
    tallies, lock = {}, threading.Lock()

    def count(key):
        with lock:
            tallies[key] = tallies.get(key, 0) + 1

    def worker():
        while not os.path.exists(a.stop_file):
            conn = Http(a.sv, timeout=30)
            try:
                status, code, body = token(conn, a.auth, tenant_id(random.randint(1, a.tenants)))
                if status == 200:
                    count("200 cached" if json.loads(body)["cached"] else "200 redeemed")
                else:
                    count(f"{status} {code}")
            except ConnectionRefusedError:
                count("refused")
                time.sleep(0.05)
            except DROPPED:
                count("dropped")
            except socket.timeout:
                count("timeout")
            finally:
                conn.close()

    threads = [threading.Thread(target=worker) for _ in range(a.threads)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    json.dump(tallies, sys.stdout)


# ---------------------------------------------------------------- check (after the crash loop)
def cmd_check(a):
    """Every listed tenant gets a token. A 503 with Retry-After (a lease still held by a killed
    process, expiring by itself within 30 s) is retried until --deadline seconds have passed."""
    conn, result, retried = Http(a.sv, timeout=30), {}, 0
    deadline = time.time() + a.deadline
    for tenant in open(a.tenants_file).read().split():
        while True:
            status, code, _ = token(conn, a.auth, tenant)
            if status == 503 and time.time() < deadline:
                retried += 1
                time.sleep(1)
                continue
            result[tenant] = 200 if status == 200 else f"{status} {code}"
            break
    json.dump({"tokens": result, "retried_503": retried}, sys.stdout)


# ---------------------------------------------------------------- storm
def fresh_code(secret, used):
    """A TOTP code of a step not used yet (the service takes each step once, one either side
    of now); waits for the clock when the usable steps are spent. `used`: [last step]."""
    while True:
        now = int(time.time()) // 30
        step = max(now - 1, used[0] + 1)
        if step <= now + 1:
            used[0] = step
            return totp(secret, step * 30)
        time.sleep(1)


def timed_sign_in(sv, creds, used):
    """A real ops user's sign-in from 127.0.0.1: (seconds the POST took, status)."""
    browser = Http(sv)
    _, _, page = browser.request("GET", "/ops/signin")
    fields = {"csrf": csrf_of(page.decode()), "username": creds["username"],
              "password": creds["password"], "code": fresh_code(creds["totp_secret"], used)}
    started = time.perf_counter()
    status, _, _ = browser.form("/ops/signin", fields)
    browser.close()
    return time.perf_counter() - started, status


def cmd_storm(a):
    """ROUNDS bursts of CONCURRENCY simultaneous dashboard sign-ins as unknown users, sent from
    --sources loopback addresses (127.0.9.1 …; the service must listen on loopback): the
    service's RSS after each burst. Sign-ins for unknown names cost no argon2 check; each
    address may have 2 in progress and 10 failures a minute, the rest get a 429. With --admin
    (`ops-user create --json` output), a real user signs in during each burst and the time is
    printed. Exit 1 when the last burst still grew the RSS by more than --max-growth MB, or a
    real sign-in took more than --max-signin seconds or failed."""
    creds = json.load(open(a.admin)) if a.admin else None
    used, slow = [0], []
    print(f"rss before: {rss_kib(a.pid) / 1024:.1f} MB")
    last = rss_kib(a.pid)
    for r in range(1, a.rounds + 1):
        statuses = []
        source = lambda i: f"127.0.9.{i % a.sources + 1}" if a.sources > 1 else None  # noqa: E731
        threads = [threading.Thread(target=lambda i=i: statuses.append(
                       bad_sign_in(Http(a.sv, source=source(i)), f"storm-{r}-{i}")))
                   for i in range(a.concurrency)]
        [t.start() for t in threads]
        signed_in = ""
        if creds:
            time.sleep(0.2)  # the burst is under way
            took, status = timed_sign_in(a.sv, creds, used)
            signed_in = f"; {creds['username']} signed in in {took * 1000:.0f} ms ({status})"
            if took > a.max_signin or status != 303:
                slow.append((r, took, status))
        [t.join() for t in threads]
        now = rss_kib(a.pid)
        mix = ", ".join(f"{s} × {statuses.count(s)}" for s in sorted(set(statuses)))
        print(f"rss after burst {r} ({a.concurrency} sign-ins, answers {mix}): "
              f"{now / 1024:.1f} MB ({(now - last) / 1024:+.1f} MB){signed_in}")
        growth, last = (now - last) / 1024, now
    sys.exit(1 if growth > a.max_growth or slow else 0)


# ---------------------------------------------------------------- soak
class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.lat = {}      # kind -> [seconds]
        self.errors = {}   # "kind: what" -> n
        self.intended = {}  # "kind status" -> n

    def ok(self, kind, seconds):
        with self.lock:
            self.lat.setdefault(kind, []).append(seconds)

    def error(self, kind, what):
        with self.lock:
            self.errors[f"{kind}: {what}"] = self.errors.get(f"{kind}: {what}", 0) + 1

    def intended_4xx(self, kind, what, seconds):
        with self.lock:
            self.intended[what] = self.intended.get(what, 0) + 1
            self.lat.setdefault(kind, []).append(seconds)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cmd_soak(a):
    """Mixed load on every replica until --minutes have passed, then the report."""
    urls, pids = a.sv.split(","), [int(p) for p in a.pids.split(",")]
    viewer = sign_in(urls[0], json.load(open(a.viewer)))
    operator = sign_in(urls[0], json.load(open(a.operator)))
    stats, stop = Stats(), threading.Event()
    consented = [0]  # new partners from real consents so far: tenants consent_first, +1, ...

    def any_partner():
        k = random.randint(1, a.seeded + consented[0])
        return tenant_id(k if k <= a.seeded else a.consent_first + k - a.seeded - 1)

    def loop(kind, pause, one, conns=None):
        """Runs `one(conn)` until stopped, round-robin over the replicas; an exception is a
        counted error, a result of (True, _) a success timed, (False, what) an error."""
        n = 0
        while not stop.is_set():
            n += 1
            conn = conns[n % len(conns)] if conns else None
            started = time.perf_counter()
            try:
                good, what = one(conn)
            except Exception as e:  # noqa: BLE001 - every failure is a counted error
                good, what = False, type(e).__name__
            if good is True:
                stats.ok(kind, time.perf_counter() - started)
            elif good == "intended":
                stats.intended_4xx(kind, what, time.perf_counter() - started)
            else:
                stats.error(kind, what)
            if pause and stop.wait(pause):
                break

    def one_token(conn):
        status, code, _ = token(conn, a.auth, any_partner())
        return status == 200, f"{status} {code}"

    wrong = base64.b64encode(base64.b64decode(a.auth).split(b":")[0] + b":wrong-secret").decode()
    bad_n = [0]

    def one_bad(conn):
        """Turns through an unknown partner (404), a wrong client secret (401) and a sign-in
        to the dashboard as an unknown user (401, as late as an argon2 check would answer;
        429 once this address has spent its failed sign-ins)."""
        bad_n[0] += 1
        kind = bad_n[0] % 3
        if kind == 0:
            status, code, _ = token(conn, a.auth, tenant_id(900_000_000_000 + bad_n[0]))
            want = (404, "partner_not_found")
        elif kind == 1:
            status, code, _ = token(conn, wrong, any_partner())
            want = (401, "invalid_client")
        else:
            status, code = bad_sign_in(conn, f"nobody-{bad_n[0]}"), None
            want = (429 if status == 429 else 401, None)  # 429: the address spent its failures
        if (status, code) == want:
            return "intended", f"{status} {code or 'wrong sign-in'}"
        return False, f"{status} {code} (wanted {want[0]})"

    pages = ["/ops", "/ops/partners", "/ops/partners?q=tenant-1", "/ops/partners?status=at_risk",
             "/ops/partners?sort=expiry", "/ops/security", "/ops/audit", "/ops/integrations", "/ops/keys"]
    page_n = [0]

    def one_page(conn):
        page_n[0] += 1
        page = pages[page_n[0] % len(pages)] if page_n[0] % 4 else f"/ops/partners/{any_partner()}"
        status, _, body = conn.request("GET", page)
        return status == 200 and b'action="/ops/signin"' not in body, f"{page.split('?')[0][:24]} {status}"

    def one_rotate(conn):
        status, done = ops_rotate(conn, any_partner())
        return done, f"{status} no 'Rotated' notice"

    def one_cli_rotate(_):
        out = subprocess.run([a.bin, "rotate", "--partner", any_partner()], capture_output=True, text=True)
        return out.returncode == 0, f"exit {out.returncode}: {out.stderr.strip()[-100:]}"

    def one_consent(conn):
        k = a.consent_first + consented[0]
        ok, detail = consent(conn, f"admin@tenant-{k}.example")
        if ok:
            consented[0] += 1  # one consent thread: a partner now, token requests may use it
        return ok, detail

    rss = []  # (seconds since start, [KiB per replica])
    started_at = time.time()

    def sample_rss():
        while True:
            rss.append((time.time() - started_at, [rss_kib(p) for p in pids]))
            if stop.wait(1.0):
                break

    each = lambda cookies=None: [session(u, cookies or {}) for u in urls]  # noqa: E731
    threads = [threading.Thread(target=loop, args=("token", 0, one_token, each()))
               for _ in range(a.token_threads)]
    threads += [
        threading.Thread(target=loop, args=("intended 4xx", 0.2, one_bad, each())),
        threading.Thread(target=loop, args=("dashboard", 0.05, one_page, each(viewer))),
        threading.Thread(target=loop, args=("ops rotate", a.rotate_every, one_rotate, each(operator))),
        threading.Thread(target=loop, args=("cli rotate", a.cli_rotate_every, one_cli_rotate)),
        threading.Thread(target=loop, args=("consent", a.consent_every, one_consent, urls)),
        threading.Thread(target=sample_rss),
    ]
    [t.start() for t in threads]
    stop.wait(a.minutes * 60)
    stop.set()
    [t.join() for t in threads]
    json.dump({"consented": consented[0]}, open(a.summary, "w"))
    report(a, stats, rss, time.time() - started_at, pids)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def report(a, stats, rss, elapsed, pids):
    total = sum(len(v) for v in stats.lat.values()) + sum(stats.errors.values())
    print(f"== soak: {elapsed / 60:.1f} min, {total} requests ({total / elapsed:.0f}/s), {len(pids)} replicas")
    print(f"{'kind':<14} {'count':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in ["token", "dashboard", "ops rotate", "cli rotate", "consent", "intended 4xx"]:
        v = stats.lat.get(kind, [])
        print(f"{kind:<14} {len(v):>8} {pct(v, .5):>8.1f} {pct(v, .99):>8.1f} {pct(v, 1):>8.1f}")
    print("intended 4xx: " + (", ".join(f"{k} x{n}" for k, n in sorted(stats.intended.items())) or "none"))
    errors = sum(stats.errors.values())
    print(f"errors (not intended): {errors}" + "".join(f"\n  {k} x{n}" for k, n in sorted(stats.errors.items())))

    # RSS: at the start, after warm-up (the first sample past --warmup seconds: the caches,
    # pools and the first sign-ins' memory are in), in the middle and at the end of the run;
    # the verdict compares the end with the value after warm-up.
    ok = errors == 0
    warm = [s for s in rss if s[0] >= a.warmup] or rss
    for i, pid in enumerate(pids):
        series = [(t, kib[i] / 1024) for t, kib in warm]
        warmed, middle, last = series[0][1], series[len(series) // 2][1], series[-1][1]
        third = series[len(series) * 2 // 3:]
        slope = fit_slope(third) * 60  # MB per minute over the last third
        grows = last > a.rss_factor * warmed
        ok &= not grows
        print(f"rss replica {i + 1} (pid {pid}): start {rss[0][1][i] / 1024:.1f} MB, after warm-up {warmed:.1f} MB, "
              f"middle {middle:.1f} MB, end {last:.1f} MB (x{last / warmed:.2f} of warm-up; last third "
              f"{slope:+.2f} MB/min); peak {max(m for _, m in series):.1f} MB -> "
              f"{'GROWS' if grows else 'bounded'} (end <= {a.rss_factor}x after warm-up)")
    if not ok:
        sys.exit(1)


def fit_slope(points):
    """Least-squares slope (units per second) of [(t, y)]."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("consent")
    c.add_argument("--sv", required=True)
    c.add_argument("--first", type=int, default=1)
    c.add_argument("--count", type=int, required=True)
    i = sub.add_parser("signin")
    i.add_argument("--sv", required=True)
    i.add_argument("--creds", required=True, help="file: `ops-user create --json` output")
    t = sub.add_parser("traffic")
    t.add_argument("--sv", required=True)
    t.add_argument("--auth", required=True)
    t.add_argument("--tenants", type=int, required=True)
    t.add_argument("--threads", type=int, default=4)
    t.add_argument("--stop-file", required=True)
    k = sub.add_parser("check")
    k.add_argument("--sv", required=True)
    k.add_argument("--auth", required=True)
    k.add_argument("--tenants-file", required=True)
    k.add_argument("--deadline", type=float, default=60)
    m = sub.add_parser("storm")
    m.add_argument("--sv", required=True)
    m.add_argument("--pid", type=int, required=True)
    m.add_argument("--concurrency", type=int, default=40)
    m.add_argument("--rounds", type=int, default=4)
    m.add_argument("--max-growth", type=float, default=20)
    m.add_argument("--sources", type=int, default=1, help="loopback addresses to send from")
    m.add_argument("--admin", help="file: `ops-user create --json` output; timed sign-in per burst")
    m.add_argument("--max-signin", type=float, default=1.0)
    s = sub.add_parser("soak")
    s.add_argument("--sv", required=True, help="replica URLs, comma-separated")
    s.add_argument("--pids", required=True, help="replica PIDs, comma-separated")
    s.add_argument("--auth", required=True)
    s.add_argument("--viewer", required=True, help="file: `ops-user create --role viewer --json`")
    s.add_argument("--operator", required=True, help="file: `ops-user create --role operator --json`")
    s.add_argument("--summary", required=True, help="file to write {\"consented\": n} to")
    s.add_argument("--bin", required=True)
    s.add_argument("--seeded", type=int, required=True, help="tenants 1..N are partners")
    s.add_argument("--consent-first", type=int, required=True)
    s.add_argument("--consent-every", type=float, default=1.0)
    s.add_argument("--rotate-every", type=float, default=0.5)
    s.add_argument("--cli-rotate-every", type=float, default=10.0)
    s.add_argument("--token-threads", type=int, default=4)
    s.add_argument("--minutes", type=float, default=3)
    s.add_argument("--warmup", type=float, default=20)
    s.add_argument("--rss-factor", type=float, default=1.5)
    a = p.parse_args()
    {"consent": cmd_consent, "signin": cmd_signin, "traffic": cmd_traffic, "check": cmd_check, "storm": cmd_storm,
     "soak": cmd_soak}[a.cmd](a)


if __name__ == "__main__":
    main()
