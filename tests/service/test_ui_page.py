"""The page at ``/`` in a real browser (Debian's Chromium, headless, driven by Playwright) against a real
niff-serve with the shipped digits model exported with its kernel report, and an API key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

import niff_export

from .conftest import API_KEY, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DIGIT_7 = ROOT / "examples" / "digits" / "digit-7.png"


def chromium() -> str:
    path = os.environ.get("NIFF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the page tests need Chromium: `make test` installs Debian's chromium, or set NIFF_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def digits_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui_models")
    niff_export.export_checkpoint(ROOT / "niff" / "assets" / "digits_resnet.pt", 32, root, name="digits", report=True)
    return root


@pytest.fixture(scope="module")
def site(start_server, digits_repository: Path) -> ServerProcess:
    return start_server(digits_repository, api_key=API_KEY)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


class Console:
    """What the page wrote to the console as errors, and the exceptions it did not catch."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def enter_key(page: Page, site: ServerProcess, key: str) -> None:
    page.goto(site.url + "/")
    page.wait_for_selector("#key-form:not([hidden])")
    page.fill("#key", key)
    page.click("#key-form button")


def test_the_page_lists_the_model_classifies_a_digit_and_shows_the_card(
    page: Page, site: ServerProcess, digits_repository: Path, tmp_path: Path
) -> None:
    console = Console(page)
    enter_key(page, site, API_KEY)
    page.wait_for_selector("#models button[data-model='digits']")
    page.set_input_files("#file", DIGIT_7)
    page.wait_for_selector("#top .bar")
    labels = page.locator("#top .bar .label").all_inner_texts()
    assert labels[0] == "7" and len(labels) == 5
    assert "inference" in page.inner_text(".timing") and "batch of" in page.inner_text(".timing")
    manifest = json.loads((digits_repository / "digits" / "niff.json").read_text())
    shown = [
        float(value)
        for value in page.locator("#parity td:nth-child(4) span").evaluate_all(
            "spans => spans.map(span => span.dataset.value)"
        )
    ]
    assert shown == [row["rel_err"] for row in manifest["parity"]["rows"]]
    page.wait_for_function("document.querySelectorAll('#figures img').length === 4")
    page.wait_for_function("[...document.querySelectorAll('#figures img')].every(img => img.naturalWidth > 0)")
    for sha256 in manifest["artifacts"]["onnx"]["sha256"], manifest["checkpoint"]["sha256"]:
        assert sha256 in page.inner_text("#card")
    screenshot = tmp_path / "page.png"
    page.screenshot(path=screenshot)
    assert screenshot.stat().st_size > 10_000
    assert console.errors == []


def test_a_file_that_is_not_an_image_gets_a_clear_message(page: Page, site: ServerProcess) -> None:
    enter_key(page, site, API_KEY)
    page.wait_for_selector("#models button[data-model='digits']")
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    message = page.wait_for_selector("#result .error").inner_text()
    assert "Could not classify notes.txt" in message and "not a JPEG, PNG, WebP, BMP or TIFF image" in message


def test_a_wrong_api_key_gets_a_clear_message_and_another_chance(page: Page, site: ServerProcess) -> None:
    enter_key(page, site, "not-the-key")
    page.wait_for_selector("#alert:not([hidden])")
    assert "The API key was not accepted" in page.inner_text("#alert")
    page.wait_for_selector("#key-form:not([hidden])")
    page.fill("#key", API_KEY)
    page.click("#key-form button")
    page.wait_for_selector("#models button[data-model='digits']")


def test_the_page_has_a_strict_content_security_policy(site: ServerProcess) -> None:
    for path in ("/", "/ui/ui.js", "/ui/ui.css"):
        response = httpx.get(site.url + path)
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(site.url + "/ui/index.html").status_code == 404  # only the listed assets


def test_report_files_are_served_as_exported_and_only_with_the_key(
    site: ServerProcess, digits_repository: Path
) -> None:
    manifest = json.loads((digits_repository / "digits" / "niff.json").read_text())
    with site.client() as client:
        for name, sha256 in manifest["report"]["files"].items():
            response = client.get(f"/v1/models/digits/report/{name}")
            assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == sha256
        assert client.get("/v1/models/digits/report/kernels.png").headers["content-type"] == "image/png"
        assert client.get("/v1/models/digits/report/niff.json").status_code == 404
    assert httpx.get(f"{site.url}/v1/models/digits/report/kernels.png").status_code == 401


def test_no_ui_turns_the_page_off(start_server, digits_repository: Path) -> None:
    server = start_server(digits_repository, "--no-ui")
    assert httpx.get(server.url + "/").status_code == 404
    assert httpx.get(server.url + "/ui/ui.js").status_code == 404
    assert httpx.get(server.url + "/v1/models").status_code == 200


def test_without_an_api_key_the_page_asks_for_none(
    page: Page, start_server, digits_repository: Path, tmp_path: Path
) -> None:
    server = start_server(digits_repository)
    console = Console(page)
    page.goto(server.url + "/")
    page.wait_for_selector("#models button[data-model='digits']")
    assert page.locator("#key-form").is_hidden() and page.locator("#key-button").is_hidden()
    page.set_input_files("#file", DIGIT_7)
    page.wait_for_selector("#top .bar")
    assert page.locator("#top .bar .label").first.inner_text() == "7"
    assert console.errors == []
