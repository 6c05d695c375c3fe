"""The dashboard in a real browser: Debian's Chromium, driven through its chromedriver by
Selenium, against a real dispatcher (tokens on, on loopback) with two real node agents
and a local HTTP target whose ``/down`` fails on purpose (and ``/flip`` once a test says
so). A second dispatcher, without tokens, shows the page needs none there.

Waits come from the dispatcher's ``--ui-refresh`` (``REFRESH_S``): the page counts its
refreshes in ``body[data-refreshes]``, so "within two refreshes" is counted, not timed.

Screenshots: every test run takes them (1440 and 390 px wide) into a temporary
directory; with ``CLUSTERCHECKS_SCREENSHOTS=<dir>`` into that directory, which is how
``docs/screenshots`` (shown in README.md) is made.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.e2e.harness import API, Reply, Target, call
from tests.processes import Proc, agent_argv, dispatcher_argv, free_port, wait_http_ok

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REFRESH_S = 1.0
HEARTBEAT_S = 0.5
EXPIRY_S = 4.0
ADMIN = "admin-secret-token"
NODE = "node-secret-token"
SOURCE = "browser"
AGENTS = {"agent-a": "zone=a", "agent-b": "zone=b"}
PATHS = ("/ok", "/down", "/flip", "/slow")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDE, NARROW = 1440, 390

T = TypeVar("T")


@dataclass
class Cluster:
    root: Path
    target: Target
    base: str
    open_base: str
    """The dispatcher without tokens."""
    procs: list[Proc] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    """target path -> the digest of its http check"""
    tcp_digest: str = ""

    def api(self, method: str, path: str, body: Any = None, token: str | None = ADMIN) -> Reply:
        return call(method, self.base + API + path, body, token=token)

    def node(self, name: str) -> dict[str, Any]:
        reply = self.api("GET", "")
        assert reply.status == 200, reply
        node: dict[str, Any] = next(n for n in reply.body["nodes"] if n["name"] == name)
        return node

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-2000:]}" for p in self.procs)


def wait_for(what: str, probe: Callable[[], T | None], *, timeout_s: float, logs: str = "") -> T:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (
            StaleElementReferenceException,
            OSError,
            KeyError,
            IndexError,
            StopIteration,
        ) as exc:
            value, last = None, repr(exc)  # the page redrew, or the API is not there yet
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} {last}\n{logs}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("ui")
    target = Target().start()
    target.failing.add("/down")
    target.delays["/slow"] = 0.2
    port, open_port = free_port(), free_port()
    c = Cluster(root, target, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{open_port}")
    common = ("--ui-refresh", str(REFRESH_S), "--heartbeat-interval", str(HEARTBEAT_S),
              "--node-expiration-timeout", str(EXPIRY_S))  # fmt: skip
    try:
        dispatcher = Proc(
            "dispatcher",
            dispatcher_argv(port, *common, "--admin-token", ADMIN, "--node-token", NODE),
            root / "dispatcher.log",
        ).start()
        c.procs.append(dispatcher)
        open_dispatcher = Proc(
            "open-dispatcher", dispatcher_argv(open_port, *common), root / "open.log"
        ).start()
        c.procs.append(open_dispatcher)
        wait_http_ok(c.base + "/readyz", proc=dispatcher, timeout_s=30)
        wait_http_ok(c.open_base + "/readyz", proc=open_dispatcher, timeout_s=30)
        for name, labels in AGENTS.items():
            argv = agent_argv(free_port(), name, c.base, "--token", NODE, "--labels", labels,
                              "--capacity", "4")  # fmt: skip
            c.procs.append(Proc(name, argv, root / f"{name}.log").start())
        wait_for(
            "both agents registered",
            lambda: {n["name"] for n in c.api("GET", "").body["nodes"]} == set(AGENTS),
            timeout_s=30,
            logs=c.logs(),
        )
        configs = [
            {"name": "http", "instances": [{"url": target.url(path)}], "interval_s": 1}
            for path in PATHS
        ]
        configs.append(
            {"name": "tcp", "instances": [{"host": "127.0.0.1", "port": target.port}],
             "interval_s": 1}
        )  # fmt: skip
        reply = c.api("POST", "/checks", {"source": SOURCE, "configs": configs})
        assert reply.status == 200, reply
        c.digests = dict(zip(PATHS, reply.body["digests"], strict=False))
        c.tcp_digest = reply.body["digests"][-1]
        # The open dispatcher gets a check too (no agent: it dangles, and says so).
        assert call("POST", c.open_base + API + "/checks",
                    {"source": SOURCE, "configs": configs[:1]}).status == 200  # fmt: skip

        def reported() -> bool:
            results = c.api("GET", "/results").body["checks"]
            return all(d in results for d in [*c.digests.values(), c.tcp_digest])

        wait_for("every check run and reported", reported, timeout_s=30, logs=c.logs())
        yield c
    finally:
        for proc in reversed(c.procs):
            proc.stop(timeout_s=10)
        target.stop()


@pytest.fixture(scope="module")
def browser(cluster: Cluster) -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        # make test installs both (scripts/ensure-system-packages); never skipped.
        assert shutil.which(path), f"{path} is missing: run scripts/ensure-system-packages"
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--window-size={WIDE},1000",
        f"--user-data-dir={cluster.root / 'chromium'}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ------------------------------------------------------------------------ helpers


def refreshes(driver: webdriver.Chrome) -> int:
    value = driver.execute_script("return document.body.dataset.refreshes || '0'")
    return int(value)


def open_page(driver: webdriver.Chrome, url: str, *, token: str | None) -> None:
    """Loads the dashboard in this tab with ``token`` in its session storage (set on a
    page of the same origin first, so the page's first call already carries it)."""
    origin = url.split("/ui/", maxsplit=1)[0]
    driver.get(origin + "/ui/icon.svg")
    if token is None:
        driver.execute_script("sessionStorage.clear()")
    else:
        driver.execute_script(
            "sessionStorage.setItem('clusterchecks.admin_token', arguments[0])", token
        )
    driver.get(url)
    wait_for("a first refresh", lambda: refreshes(driver) >= 1, timeout_s=10 * REFRESH_S)


def go(driver: webdriver.Chrome, hash_: str) -> None:
    """Navigates inside the page, then waits for the view's data (two refreshes: one
    started by the navigation, one whole one after it)."""
    before = refreshes(driver)
    driver.execute_script("location.hash = arguments[0]", hash_)
    wait_for(f"{hash_} shown", lambda: refreshes(driver) >= before + 2, timeout_s=10 * REFRESH_S)


def texts(driver: webdriver.Chrome, css: str) -> list[str]:
    return [el.text for el in driver.find_elements(By.CSS_SELECTOR, css)]


def shown_text(driver: webdriver.Chrome, element_id: str) -> str:
    el = driver.find_element(By.ID, element_id)
    return el.text if el.is_displayed() else ""


def banner(driver: webdriver.Chrome) -> str:
    """Why the data on the page is not current (empty when it is)."""
    return shown_text(driver, "banner")


def notice(driver: webdriver.Chrome) -> str:
    """How the last action ended."""
    return shown_text(driver, "notice")


def browser_log(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console's entries since the last call (chromedriver hands each out once)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def severe_logs(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [e for e in browser_log(driver) if e["level"] == "SEVERE"]


def confirm(driver: webdriver.Chrome) -> None:
    dialog = driver.find_element(By.ID, "confirm")
    wait_for("the confirmation dialog", lambda: dialog.get_attribute("open") is not None,
             timeout_s=10)  # fmt: skip
    driver.find_element(By.ID, "confirm-ok").click()


def click_action(driver: webdriver.Chrome, label: str) -> None:
    button: WebElement = wait_for(
        f"the {label!r} button",
        lambda: driver.find_element(By.CSS_SELECTOR, f'button[aria-label="{label}"]'),
        timeout_s=10 * REFRESH_S,
    )
    button.click()


def screenshot(driver: webdriver.Chrome, name: str, width: int, tmp_path: Path) -> Path:
    """The whole page at ``width`` CSS pixels, as a phone or a desktop shows it."""
    out = Path(os.environ.get("CLUSTERCHECKS_SCREENSHOTS", "") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        time.sleep(0.3)  # a layout pass at the new width
        height = driver.execute_script("return document.documentElement.scrollHeight")
        metrics["height"] = min(int(height), 3000)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        path = out / f"{name}-{width}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
        return path
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def overflow_x(driver: webdriver.Chrome) -> int:
    """How many CSS pixels the page is wider than the window (0: no sideways scroll)."""
    value = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return int(value)


# -------------------------------------------------------------------------- tests


def test_without_a_token_the_page_asks_for_one_and_works_once_it_is_entered(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    open_page(browser, cluster.base + "/ui/", token=None)
    wait_for("the token request", lambda: "admin token" in banner(browser), timeout_s=10)
    browser.find_element(By.ID, "token").send_keys(ADMIN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    leader = wait_for(
        "the leader's name",
        lambda: texts(browser, "#leader-name") and texts(browser, "#leader-name")[0],
        timeout_s=10 * REFRESH_S,
    )
    assert leader == f"dispatcher-{cluster.base.rsplit(':', 1)[1]}"
    assert banner(browser) == ""
    assert browser.find_element(By.ID, "token").get_attribute("value") == ""


def test_the_page_loads_with_no_console_errors(cluster: Cluster, browser: webdriver.Chrome) -> None:
    browser_log(browser)  # drops what earlier tests logged
    open_page(browser, cluster.base + "/ui/", token=ADMIN)
    for view in ("#/nodes", "#/checks", f"#/checks/{cluster.digests['/down']}", "#/"):
        go(browser, view)
    assert severe_logs(browser) == []
    assert "Live: updated" in browser.find_element(By.ID, "live").text


def test_every_node_and_check_appears(cluster: Cluster, browser: webdriver.Chrome) -> None:
    open_page(browser, cluster.base + "/ui/#/nodes", token=ADMIN)
    go(browser, "#/nodes")
    rows = {el.get_attribute("data-node"): el.text for el in
            browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")}  # fmt: skip
    assert set(rows) == set(AGENTS)
    for name, labels in AGENTS.items():
        assert labels in rows[name], rows[name]
    go(browser, "#/checks")
    rows = {el.get_attribute("data-digest"): el.text for el in
            browser.find_elements(By.CSS_SELECTOR, "table.checks tbody tr")}  # fmt: skip
    assert set(rows) == {*cluster.digests.values(), cluster.tcp_digest}
    for path, digest in cluster.digests.items():
        assert "http" in rows[digest]
        assert cluster.target.url(path) in rows[digest]
    assert "tcp" in rows[cluster.tcp_digest]
    assert f"127.0.0.1:{cluster.target.port}" in rows[cluster.tcp_digest]
    # Failing first: /down is the first row and says so in words, not colour alone.
    first = browser.find_element(By.CSS_SELECTOR, "table.checks tbody tr")
    assert first.get_attribute("data-digest") == cluster.digests["/down"]
    assert "failing" in first.text
    assert "503" in first.text


def test_a_check_that_starts_failing_is_shown_failing_within_two_refreshes(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    digest = cluster.digests["/flip"]
    open_page(browser, cluster.base + "/ui/#/checks", token=ADMIN)
    row = f'table.checks tr[data-digest="{digest}"]'
    wait_for("/flip shown ok", lambda: "ok" in texts(browser, f"{row} .badge")[0],
             timeout_s=10 * REFRESH_S)  # fmt: skip
    cluster.target.failing.add("/flip")
    try:
        wait_for(
            "the API to say /flip failed",
            lambda: not cluster.api("GET", "/results").body["checks"][digest]["ok"],
            timeout_s=10,
        )
        seen_at = refreshes(browser)
        wait_for("/flip shown failing", lambda: "failing" in texts(browser, f"{row} .badge")[0],
                 timeout_s=10 * REFRESH_S)  # fmt: skip
        # The refresh that first showed it failing (the page notes it on the row, so a
        # slow look from here cannot count the refreshes after it).
        shown_in = int(browser.find_element(By.CSS_SELECTOR, row).get_attribute(
            "data-status-since") or 0)  # fmt: skip
        assert shown_in <= seen_at + 2
        assert "503" in browser.find_element(By.CSS_SELECTOR, row).text
    finally:
        cluster.target.failing.discard("/flip")


def test_the_history_chart_has_points_and_marks_failures(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    digest = cluster.digests["/down"]
    open_page(browser, cluster.base + f"/ui/#/checks/{digest}", token=ADMIN)
    go(browser, f"#/checks/{digest}")
    chart = browser.find_element(By.ID, "history-chart")
    points = int(chart.get_attribute("data-points") or 0)
    assert points >= 2
    failed = chart.find_elements(By.CSS_SELECTOR, "path.fail")
    assert len(failed) == points  # /down always fails: every point is a failure mark
    assert "failed" in (chart.get_attribute("aria-label") or "")
    assert "503" in browser.find_element(By.ID, "check-errors").text
    assert "agent-" in browser.find_element(By.ID, "explain").text
    assert SOURCE in browser.find_element(By.ID, "check-head").text
    # The ok check's chart has points and no failure mark.
    go(browser, f"#/checks/{cluster.digests['/ok']}")
    chart = browser.find_element(By.ID, "history-chart")
    assert int(chart.get_attribute("data-points") or 0) >= 2
    assert chart.find_elements(By.CSS_SELECTOR, "path.fail") == []


def test_cordon_and_uncordon_from_the_page_change_the_node_in_the_api(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    open_page(browser, cluster.base + "/ui/#/nodes", token=ADMIN)
    assert not cluster.node("agent-b")["cordoned"]
    click_action(browser, "Cordon agent-b")
    confirm(browser)
    # The notice comes with the reply (and goes again after 10 s).
    wait_for("the notice", lambda: "agent-b is now cordoned" in notice(browser), timeout_s=10)
    wait_for("agent-b cordoned in the API", lambda: cluster.node("agent-b")["cordoned"],
             timeout_s=10)  # fmt: skip
    state = 'tr[data-node="agent-b"] .node-state'
    wait_for("agent-b shown cordoned (or drained)",
             lambda: texts(browser, state)[0].split()[-1] in ("cordoned", "drained"),
             timeout_s=10 * REFRESH_S)  # fmt: skip
    click_action(browser, "Uncordon agent-b")
    confirm(browser)
    wait_for("agent-b uncordoned in the API", lambda: not cluster.node("agent-b")["cordoned"],
             timeout_s=10)  # fmt: skip


def test_a_cancelled_action_changes_nothing(cluster: Cluster, browser: webdriver.Chrome) -> None:
    open_page(browser, cluster.base + "/ui/#/nodes", token=ADMIN)
    click_action(browser, "Drain agent-a")
    dialog = browser.find_element(By.ID, "confirm")
    wait_for("the dialog", lambda: dialog.get_attribute("open") is not None, timeout_s=10)
    assert "Drain agent-a?" in dialog.text
    browser.find_element(By.ID, "confirm-cancel").click()
    wait_for("the dialog closed", lambda: dialog.get_attribute("open") is None, timeout_s=10)
    go(browser, "#/nodes")
    assert not cluster.node("agent-a")["cordoned"]


def test_the_keyboard_focus_survives_the_refreshes(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    open_page(browser, cluster.base + "/ui/#/nodes", token=ADMIN)
    go(browser, "#/nodes")
    browser.execute_script(
        "document.querySelector('button[aria-label=\"Cordon agent-a\"]').focus()"
    )
    before = refreshes(browser)
    wait_for("two refreshes", lambda: refreshes(browser) >= before + 2, timeout_s=10 * REFRESH_S)
    focused = browser.execute_script(
        "return document.activeElement && document.activeElement.getAttribute('aria-label')"
    )
    assert focused == "Cordon agent-a"


def test_a_mangled_address_shows_an_unknown_check_and_keeps_refreshing(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    open_page(browser, cluster.base + "/ui/#/checks/%E0%A4", token=ADMIN)
    wait_for("the unknown check", lambda: "Unknown check" in browser.find_element(
        By.ID, "main").text, timeout_s=10 * REFRESH_S)  # fmt: skip
    before = refreshes(browser)
    wait_for("more refreshes", lambda: refreshes(browser) >= before + 2, timeout_s=10 * REFRESH_S)


def placement(cluster: Cluster) -> dict[str, str | None]:
    reply = cluster.api("GET", "/checks")
    assert reply.status == 200, reply
    return {c["digest"]: c["node"] for c in reply.body["checks"]}


def test_rebalance_shows_its_dry_run_first(cluster: Cluster, browser: webdriver.Chrome) -> None:
    before = placement(cluster)
    open_page(browser, cluster.base + "/ui/#/nodes", token=ADMIN)
    wait_for("the rebalance button", lambda: browser.find_element(By.ID, "rebalance"), timeout_s=10)
    browser.find_element(By.ID, "rebalance").click()
    dialog = browser.find_element(By.ID, "confirm")
    wait_for("the dry run shown", lambda: dialog.get_attribute("open") is not None, timeout_s=10)
    text = dialog.text
    assert "dry run plans" in text or "Nothing to move" in text, text
    browser.find_element(By.ID, "confirm-cancel").click()
    wait_for("the dialog closed", lambda: dialog.get_attribute("open") is None, timeout_s=10)
    assert placement(cluster) == before, "a dry run (then Cancel) moved checks"


def test_rebalance_applies_the_moves_its_dry_run_showed(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    """Every new check lands on agent-a while agent-b is cordoned; once both take checks,
    the page's rebalance shows the moves, and Apply makes them. The new checks take 0.1 s
    a run each (placement weighs what checks cost, not how many there are)."""
    cluster.target.delays["/spread"] = 0.1
    assert cluster.api("POST", "/nodes/agent-b/cordon").status == 200
    configs = [
        {"name": "http", "instances": [{"url": cluster.target.url(f"/spread?i={i}")}],
         "interval_s": 1}
        for i in range(8)
    ]  # fmt: skip
    reply = cluster.api("PUT", "/sources/spread", {"configs": configs})
    assert reply.status == 200, reply
    digests = reply.body["digests"]
    try:
        assert cluster.api("POST", "/nodes/agent-b/uncordon").status == 200

        # A check moves only once it has passed, and its cost counts once the agent's
        # heartbeats report it: two passes each, then two heartbeats.
        def passed_twice() -> bool:
            results = cluster.api("GET", "/results").body["checks"]
            return all(d in results and results[d]["success_count"] >= 2 for d in digests)

        wait_for("every new check passed twice", passed_twice, timeout_s=30, logs=cluster.logs())
        time.sleep(2 * HEARTBEAT_S)
        on_b = sum(1 for d in digests if placement(cluster)[d] == "agent-b")
        open_page(browser, cluster.base + "/ui/#/nodes", token=ADMIN)
        go(browser, "#/nodes")
        browser.find_element(By.ID, "rebalance").click()
        dialog = browser.find_element(By.ID, "confirm")
        wait_for("the dry run shown", lambda: dialog.get_attribute("open") is not None,
                 timeout_s=10)  # fmt: skip
        planned = texts(browser, "#rebalance-moves li")
        assert planned, dialog.text
        assert all("agent-a → agent-b" in move for move in planned), planned
        force = browser.find_elements(By.ID, "rebalance-force")
        if force:  # the gain may be below --rebalance-min-gain: the page offers to force it
            force[0].click()
        browser.find_element(By.ID, "confirm-ok").click()
        wait_for("the applied notice", lambda: "Rebalance applied" in notice(browser),
                 timeout_s=10)  # fmt: skip
        after = placement(cluster)
        assert sum(1 for d in digests if after[d] == "agent-b") == on_b + len(planned)
    finally:
        cluster.api("PUT", "/sources/spread", {"configs": []})


def test_a_wrong_token_is_refused_for_reads_and_actions(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    open_page(browser, cluster.base + "/ui/#/nodes", token=ADMIN)
    go(browser, "#/nodes")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait_for("the refusal", lambda: "refused the admin token" in banner(browser),
             timeout_s=10 * REFRESH_S)  # fmt: skip
    assert "stale" in (browser.find_element(By.ID, "live").get_attribute("class") or "")
    # The last data stays on the page, marked stale; an action from it is refused.
    click_action(browser, "Cordon agent-a")
    confirm(browser)
    wait_for("the action refused", lambda: "Cordon agent-a refused" in notice(browser),
             timeout_s=10)  # fmt: skip
    assert not cluster.node("agent-a")["cordoned"]
    browser.execute_script("sessionStorage.clear()")


def test_without_auth_the_page_needs_no_token(cluster: Cluster, browser: webdriver.Chrome) -> None:
    browser_log(browser)
    open_page(browser, cluster.open_base + "/ui/", token=None)
    leader = wait_for("the leader's name", lambda: texts(browser, "#leader-name")[0],
                      timeout_s=10 * REFRESH_S)  # fmt: skip
    assert leader == f"dispatcher-{cluster.open_base.rsplit(':', 1)[1]}"
    assert "No token needed" in browser.find_element(By.ID, "token-help").text
    assert not browser.find_element(By.ID, "token").is_displayed()
    go(browser, "#/checks")
    assert "dangling" in texts(browser, "table.checks tbody tr .badge")[0]
    assert severe_logs(browser) == []


def test_labels_names_and_words_for_assistive_technology(
    cluster: Cluster, browser: webdriver.Chrome
) -> None:
    open_page(browser, cluster.base + "/ui/#/checks", token=ADMIN)
    go(browser, "#/checks")
    problems = browser.execute_script(
        """
        const problems = [];
        if (!document.documentElement.lang) problems.push("no lang on <html>");
        for (const el of document.querySelectorAll("input, select")) {
          if (el.type !== "hidden" && !el.labels.length && !el.getAttribute("aria-label"))
            problems.push(`unlabelled ${el.tagName} ${el.id}`);
        }
        for (const el of document.querySelectorAll("button, a")) {
          const name = (el.getAttribute("aria-label") || el.textContent).trim();
          if (!name) problems.push(`nameless ${el.tagName} ${el.outerHTML.slice(0, 80)}`);
        }
        for (const el of document.querySelectorAll("img")) {
          if (!el.hasAttribute("alt")) problems.push(`img without alt ${el.src}`);
        }
        for (const el of document.querySelectorAll("svg")) {
          if (el.getAttribute("role") !== "img" || !el.getAttribute("aria-label"))
            problems.push("svg without role=img and a label");
        }
        for (const el of document.querySelectorAll(".badge")) {
          if (!el.textContent.replace(/[^A-Za-z0-9]/g, ""))
            problems.push("a badge with colour and no word");
        }
        if (!document.querySelector("th[scope=col]")) problems.push("no column headers");
        // Changes are announced politely; the clock line that moves every refresh is not.
        if (document.getElementById("live").getAttribute("aria-live"))
          problems.push("the refresh clock is a live region");
        const announce = document.getElementById("announce");
        const polite = announce.getAttribute("aria-live") === "polite";
        if (!polite || !/failing/.test(announce.textContent))
          problems.push("no polite announcement of the failing checks");
        return problems;
        """
    )
    assert problems == []


@pytest.mark.parametrize("width", [WIDE, NARROW])
def test_usable_at_phone_and_desktop_widths_with_screenshots(
    cluster: Cluster, browser: webdriver.Chrome, width: int, tmp_path: Path
) -> None:
    views = {
        "overview": "#/",
        "nodes": "#/nodes",
        "checks": "#/checks",
        "check": f"#/checks/{cluster.digests['/down']}",
    }
    open_page(browser, cluster.base + "/ui/", token=ADMIN)
    for name, view in views.items():
        go(browser, view)
        path = screenshot(browser, name, width, tmp_path)
        assert path.stat().st_size > 10_000, f"{path} looks empty"
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600},
        )
        try:
            assert overflow_x(browser) <= 0, f"{name} scrolls sideways at {width} px"
            # Actions stay reachable: the nodes' buttons are on screen, not cut off.
            if name == "nodes":
                css = 'button[aria-label="Cordon agent-a"]'
                button = browser.find_element(By.CSS_SELECTOR, css)
                right = browser.execute_script(
                    "return arguments[0].getBoundingClientRect().right", button
                )
                assert right <= width
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
