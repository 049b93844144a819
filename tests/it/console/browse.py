"""Drives the portcullis web console in headless Chromium (Selenium + chromedriver) for
tests/it/console.rs. Every wait is bounded; any failed expectation exits non-zero with a message
(and a screenshot of the moment in the screenshot directory as fail-*.png).

    python3 browse.py main   ADMIN_URL GW_URL ADMIN_KEY AGENT_KEY APPROVE_ID DENY_ID SHOTS TOTP_KEY TOTP_ID
    python3 browse.py agents ADMIN_URL GW_URL OPERATOR_KEY - - - SHOTS

`main`: sign-in (a bad key first), approve one held call, deny another, filter the call log and
open a record, the live tail showing a call this script makes, telemetry charts, the Agents and
Config pages (whatever state they are in), phone width, sign-out (and the old cookie refused);
then an approver with a TOTP secret signs in and approves a third held call (a wrong code first).
`agents` (needs the management API, feat/mgmt): issue an agent, its key works at the data plane,
revoke it, its next call is refused.
"""
import base64
import hashlib
import hmac
import json
import os
import struct
import shutil
import sys
import tempfile
import time
import uuid

import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 15
# the RFC 6238 test secret, as dave's totp_secret holds it (base32)
TOTP_SECRET_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


def totp_now():
    """The RFC 6238 code (SHA-1, 30 s, 6 digits) now: the script's own oracle."""
    key = base64.b32decode(TOTP_SECRET_B32)
    mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
    off = mac[19] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1000000)


def fail(driver, shots, msg):
    try:
        driver.save_screenshot(os.path.join(shots, "fail-%d.png" % int(time.time())))
    except Exception:
        pass
    sys.stderr.write("FAIL: %s\n" % msg)
    try:
        sys.stderr.write("at %s\n" % driver.current_url)
        for entry in driver.get_log("browser"):
            sys.stderr.write("browser log: %s\n" % entry)
    except Exception:
        pass
    driver.quit()
    sys.exit(1)


def start_driver(user_dir):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,800", "--no-first-run", "--disable-extensions",
              "--user-data-dir=" + user_dir):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(WAIT)
    viewport(d, 1280, 800)
    return d


def viewport(d, w, h):
    """Sizes the window so that the page's viewport (and so a screenshot) is exactly w x h."""
    d.set_window_size(w, h)
    iw, ih = d.execute_script("return [window.innerWidth, window.innerHeight]")
    d.set_window_size(w + (w - iw), h + (h - ih))


class Run:
    def __init__(self, driver, shots):
        self.d = driver
        self.shots = shots

    def check(self, cond, msg):
        if not cond:
            fail(self.d, self.shots, msg)

    def wait(self, fn, msg, timeout=WAIT):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1,
                                 ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
                                 ).until(lambda d: fn())
        except Exception as e:
            fail(self.d, self.shots, "%s (%s)" % (msg, type(e).__name__))

    def el(self, id_):
        return self.d.find_element(By.ID, id_)

    def visible(self, id_):
        es = self.d.find_elements(By.ID, id_)
        return bool(es) and es[0].is_displayed()

    def shot(self, name):
        self.d.execute_script("window.scrollTo(0, 0)")
        self.d.save_screenshot(os.path.join(self.shots, name))

    def page(self, name):
        self.d.execute_script("document.body.dataset.loaded = ''; location.hash = arguments[0];", name)
        self.wait(lambda: self.d.execute_script("return document.body.dataset.loaded") == name,
                  "page %s never loaded" % name)

    def sign_in(self, admin_url, key):
        self.d.get(admin_url + "/ui/login")
        k = self.el("key")
        k.clear()
        k.send_keys(key)
        self.el("sign-in").click()

    def csp_violations(self):
        return [e for e in self.d.get_log("browser")
                if "Content Security Policy" in e.get("message", "")
                or "Refused to" in e.get("message", "")]

    def rows(self, table):
        return self.d.find_elements(By.CSS_SELECTOR, "#%s tbody tr" % table)

    def cells(self, table):
        """The cell texts of a table's body rows, read in one step (no stale elements)."""
        return self.d.execute_script(
            "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
            ".map(function (r) { return Array.from(r.cells).map(function (c) { return c.textContent; }); });",
            table)


def main_flow(r, admin_url, gw_url, admin_key, agent_key, approve_id, deny_id):
    d = r.d
    results = {}
    # no session: the console sends you to the sign-in page
    d.get(admin_url + "/ui/")
    r.wait(lambda: d.current_url.endswith("/ui/login"), "no redirect to /ui/login without a session")
    r.shot("login.png")
    # a bad key is refused, with a message, and no cookie
    r.sign_in(admin_url, "pca_not-a-real-key")
    r.wait(lambda: r.visible("login-error"), "a bad key showed no error")
    r.check("not an admin key" in r.el("login-error").text, "bad-key message: " + r.el("login-error").text)
    r.check(d.get_cookie("pcs_session") is None, "a bad key set a session cookie")
    # the right key
    r.sign_in(admin_url, admin_key)
    r.wait(lambda: d.current_url.endswith("/ui/"), "sign-in did not land on /ui/")
    r.wait(lambda: "alice (approver)" in r.el("whoami").text, "whoami never showed alice (approver)")
    cookie = d.get_cookie("pcs_session")
    r.check(cookie is not None and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict"
            and cookie.get("path") == "/", "cookie attributes: %r" % cookie)
    # HttpOnly: page scripts cannot read it
    r.check("pcs_session" not in d.execute_script("return document.cookie"), "the session cookie is readable by scripts")

    # --- approvals: approve one, deny the other
    r.page("approvals")
    r.wait(lambda: d.find_elements(By.ID, "open-" + approve_id), "approval %s not listed" % approve_id)
    r.wait(lambda: d.find_elements(By.ID, "open-" + deny_id), "approval %s not listed" % deny_id)
    d.find_element(By.ID, "open-" + approve_id).click()
    r.wait(lambda: r.el("ad-id").text == approve_id, "approval detail never showed")
    r.wait(lambda: '"amount":1' in r.el("ad-body").text.replace(" ", ""), "held body not shown: " + r.el("ad-body").text)
    headers = [t.text for t in d.find_elements(By.CSS_SELECTOR, "#ad-headers tbody td")]
    r.check(any(h.lower() == "x-trace" for h in headers), "held headers not shown: %r" % headers)
    r.check(not any(agent_key in h for h in headers), "the agent key is shown in the held headers")
    r.check(r.visible("decide-form") and not r.visible("decide-totp-wrap"), "decision form state")
    r.el("decide-reason").send_keys("refund ok")
    r.shot("approvals.png")
    r.el("approve-btn").click()
    r.wait(lambda: ("Approved " + approve_id) in r.el("flash").text, "no approval confirmation: " + r.el("flash").text)
    d.find_element(By.ID, "open-" + deny_id).click()
    r.wait(lambda: r.el("ad-id").text == deny_id, "second approval detail never showed")
    r.wait(lambda: r.visible("decide-form"), "no decision form for the second approval")
    r.el("decide-reason").send_keys("not today")
    # keyboard: focus the Deny button and press Enter
    deny = r.el("deny-btn")
    d.execute_script("arguments[0].focus()", deny)
    deny.send_keys("\n")
    r.wait(lambda: ("Denied " + deny_id) in r.el("flash").text, "no denial confirmation: " + r.el("flash").text)
    # history by status
    Select(r.el("approvals-status")).select_by_value("denied")
    r.el("approvals-filter").submit()
    r.wait(lambda: d.find_elements(By.ID, "open-" + deny_id), "the denied approval is not in the denied history")
    r.check(not d.find_elements(By.ID, "open-" + approve_id), "the approved one shows under denied")
    results["approvals"] = "ok"

    # --- calls: filter, open a record
    r.page("calls")
    r.wait(lambda: len(r.rows("calls-table")) > 0, "no calls listed")
    r.el("f-proxy").send_keys("other")
    r.el("calls-apply").click()
    def only_other():
        cells = r.cells("calls-table")
        return cells and all(len(c) > 2 and c[2] == "other" for c in cells)
    r.wait(only_other, "the proxy filter did not narrow the log to proxy other")
    paths = [c[4] for c in r.cells("calls-table")]
    r.check("/other/hello" in paths, "the known call /other/hello not listed: %r" % paths)
    r.el("f-proxy").clear()
    Select(r.el("f-decision")).select_by_value("deny")
    r.el("calls-apply").click()
    def only_deny():
        cells = r.cells("calls-table")
        return cells and all(len(c) > 6 and c[6] == "deny" for c in cells)
    r.wait(only_deny, "the decision filter did not narrow the log to deny")
    first = r.rows("calls-table")[0]
    rec_id = first.get_attribute("data-id")
    first.find_element(By.TAG_NAME, "button").click()
    r.wait(lambda: r.visible("call-detail") and r.el("cd-id").text == rec_id, "record detail never opened")
    r.check("deny" in r.el("cd-fields").text, "record detail lacks the decision")
    Select(r.el("f-decision")).select_by_value("")
    r.el("calls-apply").click()
    r.wait(lambda: len(r.rows("calls-table")) > 0, "no calls after clearing the filter")
    # live tail: a call made now shows up
    r.el("tail-toggle").click()
    r.wait(lambda: "connected" in r.el("tail-state").text, "the live tail never connected")
    probe = "/other/tail-probe-" + uuid.uuid4().hex[:12]
    resp = requests.get(gw_url + probe, headers={"Authorization": "Bearer " + agent_key}, timeout=10)
    r.check(resp.status_code == 200, "probe call answered %d" % resp.status_code)
    r.wait(lambda: any(probe in " ".join(c) for c in r.cells("tail-table")), "the live tail never showed " + probe)
    r.shot("calls.png")
    r.el("tail-toggle").click()
    r.wait(lambda: "off" in r.el("tail-state").text, "the live tail did not stop")
    results["calls"] = "ok"
    results["probe"] = probe

    # --- telemetry
    r.page("telemetry")
    r.wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#tele-charts svg")) >= 4, "telemetry charts missing")
    r.wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#tele-charts polyline, #tele-charts circle")) > 0, "no data points drawn")
    tele = r.el("tele-table").text
    r.check("pay" in tele and "other" in tele, "telemetry table lacks the proxies: " + tele)
    r.check("approval_denied" in tele or "no_rule_matched" in tele, "no refusal codes in telemetry: " + tele)
    r.shot("telemetry.png")

    # --- agents, config: whatever state the management API is in, the page says so clearly
    r.page("agents")
    r.check(r.visible("agents-unavailable") or r.visible("agents-table"), "the Agents page shows nothing")
    if r.visible("agents-unavailable"):
        r.check("404" in r.el("agents-unavailable").text, "unclear Agents message")
    r.check(not r.visible("agent-issue"), "an approver sees the issue-agent form")
    r.shot("agents.png")
    results["agents_api"] = "absent" if r.visible("agents-unavailable") else "present"
    r.page("config")
    r.check(r.visible("config-unavailable") or r.visible("config-view"), "the Config page shows nothing")
    r.check(not r.visible("config-check"), "an approver sees the config check form")
    r.shot("config.png")

    # --- phone width: nothing overflows the viewport sideways
    viewport(d, 390, 844)
    r.page("approvals")
    sw = d.execute_script("return document.documentElement.scrollWidth")
    iw = d.execute_script("return window.innerWidth")
    r.check(sw <= iw + 1, "horizontal overflow at phone width: %d > %d" % (sw, iw))
    r.shot("approvals-phone.png")
    viewport(d, 1280, 800)

    # no Content-Security-Policy violation on any page
    v = r.csp_violations()
    r.check(not v, "CSP violations: %r" % v)

    # --- sign out; the old cookie no longer opens anything
    old = d.get_cookie("pcs_session")["value"]
    r.el("sign-out").click()
    r.wait(lambda: d.current_url.endswith("/ui/login"), "sign-out did not land on /ui/login")
    r.check(d.get_cookie("pcs_session") is None, "the cookie survived sign-out")
    d.get(admin_url + "/ui/")
    r.wait(lambda: d.current_url.endswith("/ui/login"), "/ui/ after sign-out is not the sign-in page")
    stale = requests.get(admin_url + "/v1/requests", cookies={"pcs_session": old}, timeout=10)
    r.check(stale.status_code == 401, "the signed-out cookie still reads the log: %d" % stale.status_code)
    results["signed_out"] = "ok"
    return results


def totp_flow(r, admin_url, totp_key, totp_id):
    d = r.d
    r.sign_in(admin_url, totp_key)
    r.wait(lambda: d.current_url.endswith("/ui/"), "dave's sign-in did not land on /ui/")
    r.wait(lambda: "dave (approver)" in r.el("whoami").text, "whoami never showed dave")
    r.page("approvals")
    r.wait(lambda: d.find_elements(By.ID, "open-" + totp_id), "approval %s not listed" % totp_id)
    d.find_element(By.ID, "open-" + totp_id).click()
    r.wait(lambda: r.el("ad-id").text == totp_id, "approval detail never showed")
    r.wait(lambda: r.visible("decide-totp-wrap"), "no TOTP field for an admin with a totp_secret")
    good = totp_now()
    wrong = "%06d" % ((int(good) + 500000) % 1000000)
    r.el("decide-totp").send_keys(wrong)
    r.el("approve-btn").click()
    r.wait(lambda: "totp_invalid" in r.el("flash").text, "a wrong TOTP code was not refused: " + r.el("flash").text)
    r.wait(lambda: r.visible("decide-form"), "the approval is no longer decidable after a wrong code")
    r.el("decide-totp").clear()
    r.el("decide-totp").send_keys(totp_now())
    r.el("approve-btn").click()
    r.wait(lambda: ("Approved " + totp_id) in r.el("flash").text, "the TOTP approval failed: " + r.el("flash").text)
    return "ok"


def agents_flow(r, admin_url, gw_url, operator_key):
    d = r.d
    r.sign_in(admin_url, operator_key)
    r.wait(lambda: d.current_url.endswith("/ui/"), "sign-in did not land on /ui/")
    r.page("agents")
    r.check(r.visible("agents-table"), "the agents API is not available: " + r.el("agents-unavailable").text)
    agent_id = "ui-bot-" + uuid.uuid4().hex[:6]
    r.el("ai-id").send_keys(agent_id)
    r.el("ai-submit").click()
    r.wait(lambda: r.visible("agent-key") and r.el("ak-id").text == agent_id, "no key shown for the new agent")
    key = r.el("ak-key").text.strip()
    r.check(key.startswith("pcs_"), "odd key: %r" % key)
    r.wait(lambda: d.find_elements(By.ID, "revoke-" + agent_id), "the new agent is not listed")
    r.shot("agents.png")
    ok = requests.get(gw_url + "/other/issued", headers={"Authorization": "Bearer " + key}, timeout=10)
    r.check(ok.status_code == 200, "the issued key was refused: %d %s" % (ok.status_code, ok.text))
    d.find_element(By.ID, "revoke-" + agent_id).click()
    r.wait(lambda: d.switch_to.alert, "no confirmation dialog")
    d.switch_to.alert.accept()
    r.wait(lambda: ("Revoked " + agent_id) in r.el("flash").text, "no revocation confirmation")
    refused = None
    for _ in range(40):
        refused = requests.get(gw_url + "/other/revoked", headers={"Authorization": "Bearer " + key}, timeout=10)
        if refused.status_code == 401:
            break
        time.sleep(0.05)
    r.check(refused is not None and refused.status_code == 401, "the revoked key still works: %d" % refused.status_code)
    return {"agent": agent_id, "issued": "ok", "revoked": "ok"}


def run():
    mode, admin_url, gw_url, key, agent_key, approve_id, deny_id, shots = sys.argv[1:9]
    totp_key, totp_id = (sys.argv[9:11] + ["-", "-"])[:2]
    os.makedirs(shots, exist_ok=True)
    user_dir = tempfile.mkdtemp(prefix="pcs-chromium-")
    d = start_driver(user_dir)
    try:
        r = Run(d, shots)
        if mode == "main":
            out = main_flow(r, admin_url, gw_url, key, agent_key, approve_id, deny_id)
            out["totp"] = totp_flow(r, admin_url, totp_key, totp_id)
        else:
            out = agents_flow(r, admin_url, gw_url, key)
        print(json.dumps(out))
    finally:
        try:
            d.quit()
        finally:
            shutil.rmtree(user_dir, ignore_errors=True)


if __name__ == "__main__":
    run()
