"""Driving the web app in a real, headless Chromium (the tests and the README screenshot use it).

Selenium talks to the system's Chromium through its chromedriver (Debian: `apt-get install chromium
chromium-driver`). Both are found on the PATH and passed explicitly, so Selenium never tries to download a browser.
"""

import os
import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
INSTALL_HINT = "install Chromium and its driver, e.g. `apt-get install chromium chromium-driver` on Debian/Ubuntu"


def find_chromium() -> tuple[str, str] | None:
    """`(browser, chromedriver)` paths from `$CHROMIUM` / `$CHROMEDRIVER` or the PATH; None if either is missing."""
    browser = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = os.environ.get("CHROMEDRIVER") or next(filter(None, map(shutil.which, DRIVERS)), None)
    return (browser, driver) if browser and driver else None


class ChatPage:
    """The chat page of a running `tinyllava-chat` web app, in a headless Chromium window.

    Args:
        url: the app's address.
        timeout: seconds to wait for the page, an upload or an answer before failing.
        window: the browser window's `(width, height)` in CSS pixels.
    """

    def __init__(self, url: str, timeout: float = 120, window: tuple[int, int] = (1280, 900)):
        found = find_chromium()
        if found is None:
            raise RuntimeError(f"No Chromium/chromedriver found: {INSTALL_HINT}.")
        options = webdriver.ChromeOptions()
        options.binary_location = found[0]
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(argument)
        options.add_argument(f"--window-size={window[0]},{window[1]}")
        self.driver = webdriver.Chrome(service=Service(found[1]), options=options)
        self.timeout = timeout
        try:
            self.driver.get(url)
            self.wait_until(lambda _: self.textarea().is_enabled(), "the page to load")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.driver.quit()

    def wait_until(self, condition, what: str):
        """Polls `condition(driver)` until it is truthy (stale elements count as not yet); fails naming `what`."""
        return WebDriverWait(
            self.driver, self.timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition, f"Timed out after {self.timeout} s waiting for {what}.")

    def textarea(self):
        return self.driver.find_element(By.CSS_SELECTOR, "#chat-input textarea")

    def messages(self, role: str) -> list[str]:
        """The text of every `role` (`"user"` or `"bot"`) message in the chat, in order (images have none)."""
        return [element.text for element in self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{role}"]')]

    def attach(self, path: str | Path) -> None:
        """Attaches a file with the input box's upload button, and waits until it is uploaded."""
        before = len(self.driver.find_elements(By.CSS_SELECTOR, "#chat-input .thumbnail-item"))
        self.driver.find_element(By.CSS_SELECTOR, '#chat-input input[type="file"]').send_keys(str(Path(path).resolve()))
        self.wait_until(
            lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#chat-input .thumbnail-item")) > before,
            f"the upload of {path}",
        )

    def ask(self, question: str) -> str:
        """Types `question`, presses Enter and waits until the answer is complete; returns the last bot message."""
        self.textarea().send_keys(question)
        return self.submit()

    def submit(self) -> str:
        """Presses Enter in the input box and waits until the answer is complete; returns the last bot message."""
        before = len(self.messages("bot"))
        self.textarea().send_keys(Keys.ENTER)
        # The app disables the input box while it answers, so a new bot message and an enabled box mean done.
        self.wait_until(lambda _: len(self.messages("bot")) > before and self.textarea().is_enabled(), "an answer")
        return self.messages("bot")[-1]

    def use_example(self, question: str) -> None:
        """Clicks the example with this question, and waits until it fills the input box (question and image)."""
        (example,) = [
            item for item in self.driver.find_elements(By.CSS_SELECTOR, "button.gallery-item") if item.text == question
        ]
        example.click()
        self.wait_until(
            lambda driver: (
                self.textarea().get_attribute("value") == question
                and driver.find_elements(By.CSS_SELECTOR, "#chat-input .thumbnail-item")
            ),
            f"the example {question!r} to fill the input box",
        )

    def reset(self) -> None:
        """Starts a new conversation with the page's reset button; on an empty chat, by reloading the page (a new
        tab state), because then nothing on the page would show that the reset has reached the server."""
        if not self.messages("user") and not self.messages("bot"):
            self.driver.refresh()
            self.wait_until(lambda _: self.textarea().is_enabled(), "the page to reload")
            return
        self.driver.find_element(By.CSS_SELECTOR, "#reset").click()
        self.wait_until(lambda _: not self.messages("user") and not self.messages("bot"), "the chat to clear")

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        time.sleep(0.5)  # let images in the chat finish their fade-in
        self.driver.save_screenshot(str(path))
        return path
