"""The admin page in headless Chromium (driven by tests/admin.rs): log in, visit every page, look at what a
person would see, collect console errors, save a screenshot of each page. Prints one JSON object of findings;
the Rust test asserts on it.

argv[1]: JSON {"base": URL, "key": admin key, "shots": dir, "record": id of a hostile record,
               "filter_model": a model to filter the requests table by, "xss_model": the hostile model name}
"""

import json
import os
import shutil
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

args = json.loads(sys.argv[1])
base = args["base"]
os.makedirs(args["shots"], exist_ok=True)

profile = tempfile.mkdtemp(prefix="gpt-api-chromium-")
options = webdriver.ChromeOptions()
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--window-size=1280,1000",
             "--user-data-dir=" + profile]:
    options.add_argument(flag)
options.binary_location = "/usr/bin/chromium"
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
found = {"console": {}}


def severe():
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def visit(name, path):
    driver.get(base + path)
    found["console"][name] = severe()
    driver.save_screenshot(os.path.join(args["shots"], name + ".png"))


def gone(element):
    """A wait condition: `element` has left the document. Chromedriver reports a node that the navigation detaches
    as a stale reference or, when the navigation races the call, as an inspector error ("Node with given id does
    not belong to the document"), which selenium's `staleness_of` does not expect (a rare failure in CI)."""
    def check(_):
        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
    return check


def submit(button):
    """Clicks a form's button and waits for the page it leads to (a click does not wait for navigation)."""
    button.click()
    WebDriverWait(driver, 20).until(gone(button))
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def log_in(key):
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    submit(driver.find_element(By.CSS_SELECTOR, "form.login button"))


try:
    visit("login", "/")
    found["login_url"] = driver.current_url
    log_in("not-the-key")
    found["wrong_key_refused"] = len(driver.find_elements(By.ID, "login-error")) == 1
    found["wrong_key_console"] = severe()  # the 401 itself is logged; nothing else may be
    log_in(args["key"])
    found["after_login"] = driver.current_url
    found["console"]["overview-after-login"] = severe()

    visit("overview", "/?range=30d")
    found["overview_requests"] = driver.find_element(By.CSS_SELECTOR, "#requests .value").text
    found["overview_tokens"] = driver.find_element(By.CSS_SELECTOR, "#tokens .value").text
    bars = driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
    found["bars"] = len(bars)
    found["bar_height"] = max([float(b.get_attribute("height")) for b in bars] or [0])
    found["top_models_text"] = driver.find_element(By.ID, "top-models").text
    found["injected_elements"] = len(driver.find_elements(By.CSS_SELECTOR, "main img, main script"))

    found["light_background"] = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    dark = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", dark)
    visit("overview-dark", "/?range=30d")
    found["dark_background"] = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    driver.set_window_size(390, 844)
    visit("overview-phone", "/?range=30d")
    found["phone_overflow"] = driver.execute_script(
        "return document.documentElement.scrollWidth > window.innerWidth + 1")
    driver.set_window_size(1280, 1000)

    visit("requests", "/requests")
    found["rows_before"] = len(driver.find_elements(By.CSS_SELECTOR, "#requests tbody tr"))
    found["requests_text"] = driver.find_element(By.ID, "requests").text
    model = driver.find_element(By.CSS_SELECTOR, "#filters input[name=model]")
    model.send_keys(args["filter_model"])
    submit(driver.find_element(By.CSS_SELECTOR, "#filters button"))
    found["console"]["requests-filtered"] = severe()
    found["rows_after"] = len(driver.find_elements(By.CSS_SELECTOR, "#requests tbody tr"))
    found["filtered_url"] = driver.current_url
    driver.save_screenshot(os.path.join(args["shots"], "requests-filtered.png"))

    visit("record", "/requests/" + args["record"])
    found["request_body"] = driver.find_element(By.ID, "request-body").text
    found["headers_text"] = driver.find_element(By.ID, "headers").text
    found["record_title"] = driver.find_element(By.TAG_NAME, "h1").text
    found["facts_text"] = driver.find_element(By.ID, "facts").text
    found["record_injected"] = len(driver.find_elements(By.CSS_SELECTOR, "main img, main script"))

    visit("backends", "/backends")
    found["backends_text"] = driver.find_element(By.ID, "backends").text
    visit("keys", "/keys")
    found["keys_text"] = driver.find_element(By.ID, "keys").text
    # An alert from an injected script would have interrupted a command above; make sure none is pending.
    try:
        driver.switch_to.alert.text
        found["alert"] = True
    except Exception:
        found["alert"] = False
finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)

print(json.dumps(found))
