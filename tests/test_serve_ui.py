"""The dashboard at ``/ui`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium against a real ``lukhas-gpu serve`` on 127.0.0.1.

The numbers the page shows equal ``/v1/stats``; a search typed into the page shows its results
with their contents ("more like this" too); without the key the data calls are refused and the
page asks for it. ``LUKHAS_UI_SCREENSHOT=FILE`` saves the page (the README's docs/dashboard.png).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import CI_VALUES, optional_import

optional_import("fastapi")
optional_import("uvicorn")
httpx = optional_import("httpx")
try:  # the browser tests skip without selenium (fail under CI) in the fixture; the rest run anyway
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

from lukhas_gpu import IndexConfig, MemoryIndex  # noqa: E402

from serve_helpers import server  # noqa: E402

DIM, N = 32, 800
KEY = "k3y-0123456789abcdef-dashboard"
TOPICS = ("tokyo harbour at night", "a river in spring", "cats asleep on the stairs", "the old lighthouse")
#: stats() figures that move by themselves between two calls (the process's, the query sample's)
VOLATILE = {"runtime_libraries", "python_pools", "probe"}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").strip().lower() in CI_VALUES:
        pytest.fail(f"CI: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    optional_import("selenium.webdriver")
    chromium, driver = _browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1200", "--disable-extensions"):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(driver))
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def store(tmp_path_factory, clustered):
    xb, _ = clustered(N, DIM, n_queries=1, seed=11)
    path = tmp_path_factory.mktemp("ui") / "store"
    s = MemoryIndex.create(path, DIM, IndexConfig(text_index=True))
    s.add(xb, contents=[f"memory {i}: {TOPICS[i % len(TOPICS)]}" for i in range(N)])
    s.close()
    return path


@pytest.fixture(scope="module")
def url(store, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY)
    with server(store, "--api-key-file", str(key_file), "--quality-s", "1", "--refresh-s", "0") as u:
        yield u


def _get(url, path, **kw):
    return httpx.get(url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=30, **kw)


def _open(browser, url, fragment=""):
    browser.get("about:blank")
    browser.get(url + "/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")
    browser.get(url + "/ui" + fragment)


def _wait(browser, cond, timeout=30):
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda d: cond(d))


def test_numbers_shown_equal_stats(url, browser):
    rng = np.random.default_rng(0)
    for _ in range(12):  # traffic for the QPS card
        r = httpx.post(url + "/v1/search", json={"vectors": rng.standard_normal((1, DIM)).tolist(), "k": 5},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert r.status_code == 200
    _open(browser, url, f"#key={KEY}")
    _wait(browser, lambda d: d.find_element(By.ID, "recall").get_attribute("data-value"))  # --quality-s 1
    assert "key=" not in browser.current_url  # the fragment is dropped from the history
    stats = _get(url, "/v1/stats").json()
    count = stats["count"]
    el = browser.find_element(By.ID, "count")
    assert int(el.get_attribute("data-value")) == count == N
    assert el.text == f"{count:,}"
    # read in one script: the page redraws the table every few seconds
    cells = browser.execute_script("return [...document.querySelectorAll('#bytes td[data-place]')].map("
                                   "td => [td.dataset.component, td.dataset.place, td.dataset.value, td.textContent])")
    shown = {(c, p): (v, text) for c, p, v, text in cells}
    compared = 0
    for place in ("anon", "mapped", "disk", "gpu"):
        for comp, v in stats["memory"][place].items():
            value, text = shown[(comp, place)]
            if comp in VOLATILE:
                continue
            assert int(value) == v, (comp, place)
            assert abs(float(text) - v / count) <= 0.05 + 1e-9, (comp, place, text)
            compared += 1
    assert compared >= 20
    assert int(shown[("all", "disk")][0]) == stats["memory"]["disk_bytes"]
    # the searches of the last minute: the page's figure and /metrics' gauge read one ring, which
    # counts complete seconds only: the page shows them from its first refresh after that second
    qps = float(_wait(browser, lambda d: float(d.find_element(By.ID, "qps").get_attribute("data-value") or 0) or None))
    metrics = _get(url, "/metrics").text
    gauge = float(next(ln.split()[-1] for ln in metrics.splitlines() if ln.startswith("rest_search_qps ")))
    assert qps > 0 and gauge > 0 and abs(qps - gauge) <= 12 / 60 + 1e-9
    assert "p99" in browser.find_element(By.ID, "latency").text
    recall = float(browser.find_element(By.ID, "recall").get_attribute("data-value"))
    assert 0.0 < recall <= 1.0
    assert "not trained yet" in browser.find_element(By.ID, "tuning").text  # 800 memories: exact search
    assert "rows measured" in browser.find_element(By.ID, "drift").text
    shot = os.environ.get("LUKHAS_UI_SCREENSHOT")
    if shot:
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(shot)


def _results(browser) -> list[tuple[int, str]]:
    rows = browser.execute_script("return [...document.querySelectorAll('#results tbody tr')].map("
                                  "tr => [tr.dataset.id, tr.querySelector('td.content').textContent])")
    return [(int(i), text) for i, text in rows]


def test_search_in_the_page(url, browser):
    _open(browser, url, f"#key={KEY}")
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
    Select(browser.find_element(By.ID, "search-mode")).select_by_value("text")
    box = browser.find_element(By.ID, "search-input")
    box.clear()
    box.send_keys("lighthouse")
    browser.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    _wait(browser, lambda d: _results(d))
    got = _results(browser)
    want = httpx.post(url + "/v1/dashboard/search", json={"text": "lighthouse", "k": 10},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()["results"]
    assert [i for i, _ in got] == [r["id"] for r in want] and len(got) == 10
    for i, content in got:
        assert content == f"memory {i}: the old lighthouse"
    # "more like this" from the first result: its neighbours by the stored vector, itself left out
    first = got[0][0]
    browser.find_element(By.CSS_SELECTOR, "#results tbody tr button").click()
    _wait(browser, lambda d: _results(d) and _results(d)[0][0] != first)
    like = _results(browser)
    assert first not in [i for i, _ in like] and len(like) == 10
    assert all(c.startswith(f"memory {i}: ") for i, c in like)


def test_without_the_key_data_calls_are_refused(url, browser):
    assert httpx.get(url + "/ui", timeout=30).status_code == 200  # the page itself holds no data
    assert httpx.get(url + "/v1/dashboard", timeout=30).status_code == 401
    r = httpx.post(url + "/v1/dashboard/search", json={"text": "river"}, timeout=30)
    assert r.status_code == 401
    r = httpx.get(url + "/v1/dashboard", headers={"Authorization": "Bearer wrong-key-0123456789"}, timeout=30)
    assert r.status_code == 401
    _open(browser, url)  # no key anywhere: the page asks for it and shows nothing
    _wait(browser, lambda d: d.find_element(By.ID, "key-panel").is_displayed())
    assert not browser.find_element(By.ID, "main").is_displayed()
    assert "API key" in browser.find_element(By.ID, "status").text
    box = browser.find_element(By.ID, "key-input")
    box.send_keys("wrong-key-0123456789")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    _wait(browser, lambda d: "wrong API key" in d.find_element(By.ID, "status").text)
    assert not browser.find_element(By.ID, "main").is_displayed()
    browser.find_element(By.ID, "key-input").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    _wait(browser, lambda d: d.find_element(By.ID, "main").is_displayed())
    assert browser.find_element(By.ID, "count").text == f"{N:,}"


def test_dashboard_search_refuses_bad_input(url):
    h = {"Authorization": f"Bearer {KEY}"}
    for body, needle in (({"text": "a", "like": 1}, "exactly one"), ({"k": 5}, "exactly one"),
                         ({"text": "a", "k": 0}, "k:"), ({"text": "a", "k": True}, "k:"),
                         ({"text": "x" * 10_001}, "at most"), ({"like": "7"}, "like:"),
                         ({"like": N + 5}, "unknown id"), ({"text": "a", "q": 1}, "unknown field"), ([1], "object")):
        r = httpx.post(url + "/v1/dashboard/search", json=body, headers=h, timeout=30)
        assert r.status_code == 422, (body, r.text)
        assert needle in r.json()["status"]["error"], (body, r.text)


def test_dashboard_json_agrees_with_stats_and_metrics(url):
    """Without a browser: /v1/dashboard carries /v1/stats' figures, and its traffic ring counts
    exactly the searches answered (the ring behind /metrics' windowed gauges too)."""
    import time

    def searched(d):  # every search the ring holds (the series spans ~10 minutes)
        return round(sum(p["qps"] for p in d["traffic"]["series"]) * d["traffic"]["step_s"])

    time.sleep(1.05)  # the ring counts complete seconds
    before = searched(_get(url, "/v1/dashboard").json())
    rng = np.random.default_rng(1)
    for _ in range(7):
        r = httpx.post(url + "/v1/search", json={"vectors": rng.standard_normal((2, DIM)).tolist(), "k": 3},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert r.status_code == 200
    time.sleep(1.05)
    d = _get(url, "/v1/dashboard").json()
    assert searched(d) - before == 7
    stats = _get(url, "/v1/stats").json()
    for key in ("count", "rows", "deleted", "dim", "phase", "tuning", "config"):
        assert d["stats"][key] == stats[key], key
    assert d["stats"]["memory"]["disk_bytes"] == stats["memory"]["disk_bytes"]
    assert d["mode"] == "r" and d["text_index"] is True and d["drift"]["trained"] is False
    assert "history" not in d["drift"]
    recent = d["traffic"]["recent"]
    assert recent["requests"] >= 7 and recent["p50"] <= recent["p90"] <= recent["p99"]
