"""The web page at `/` in a real browser (Debian's chromium driven by Playwright) against the real
embedded stack: upload a real photo, paint a mask with the mouse, submit, watch progress, see
and download the result; cancel a running job; a bad upload's message next to the image field;
recent jobs kept; usable at phone width. Screenshots of each state go to DDNM_SCREENSHOTS
(docs/screenshots when the README's pictures are made again), else to a temporary folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright
from skimage import data

from cli.embedded import Stack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it)
# the default model (trained, shipped in the package): the screenshots show a real restoration
ENV = {"OMP_NUM_THREADS": "1", "DDNM_PREVIEW_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(port=free_port(), workers=1, env=ENV, log_dir=tmp_path_factory.mktemp("web")) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 1400}, accept_downloads=True)
    p = context.new_page()
    p.goto(stack.url)
    yield p
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("DDNM_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def photo(tmp: Path, size: int, name: str = "photo.png") -> Path:
    """A real photo (skimage's astronaut), reduced to size x size, as a PNG file."""
    image = Image.fromarray(data.astronaut()[30:430, 50:450]).resize((size, size), Image.LANCZOS)
    path = tmp / name
    image.save(path)
    return path


def few_steps(page: Page, steps: int) -> None:
    page.click("summary")
    page.fill("#steps", str(steps))
    page.dispatch_event("#steps", "change")


def test_paint_a_mask_restore_watch_and_download(page: Page, tmp_path: Path, shots: Path) -> None:
    page.set_input_files("#file", str(photo(tmp_path, 32)))
    expect(page.locator("#size")).to_have_text("32 x 32 pixels")
    page.select_option("#op", "inpaint")
    expect(page.locator("#tools")).to_be_visible()
    few_steps(page, 40)
    expect(page.locator("#cost")).to_contain_text("network evaluations")
    box = page.locator("#mask").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=12)
    page.mouse.up()
    painted = page.evaluate(
        "() => { const c = document.getElementById('mask');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 40; return n; }"
    )
    assert 30 < painted < 32 * 32 / 2  # a stroke, not the whole image
    page.screenshot(path=str(shots / "1-mask.png"), full_page=True)
    page.click("#submit")
    page.wait_for_function("document.getElementById('bar').value > 0", timeout=60_000)
    expect(page.locator("#status")).to_contain_text("step")
    page.screenshot(path=str(shots / "2-progress.png"), full_page=True)
    expect(page.locator("#result")).to_be_visible(timeout=90_000)
    expect(page.locator("#consistency")).to_contain_text("Consistency")
    page.fill("#slider", "20")
    page.dispatch_event("#slider", "input")
    page.screenshot(path=str(shots / "3-result.png"), full_page=True)
    with page.expect_download() as download:
        page.click("#download")
    restored = Image.open(download.value.path())
    assert restored.size == (32, 32) and restored.mode == "RGB"
    # the job is remembered by this browser
    page.reload()
    expect(page.locator("#jobs li").first).to_contain_text("succeeded")


def test_cancel_a_running_job(page: Page, tmp_path: Path, shots: Path) -> None:
    page.set_input_files("#file", str(photo(tmp_path, 8)))
    page.select_option("#factor", "4")
    few_steps(page, 1000)
    page.click("#submit")
    page.wait_for_function("document.getElementById('bar').value > 0", timeout=60_000)
    page.click("#cancel")
    expect(page.locator("#status")).to_contain_text("canceled", timeout=30_000)
    expect(page.locator("#result")).to_be_hidden()
    page.screenshot(path=str(shots / "4-canceled.png"), full_page=True)


def test_a_bad_upload_shows_the_apis_message_by_the_image_field(
    page: Page, tmp_path: Path, shots: Path
) -> None:
    bad = tmp_path / "not-a-photo.png"
    bad.write_bytes(b"this is text, not an image")
    page.set_input_files("#file", str(bad))
    expect(page.locator("#image-error")).to_contain_text("image: ")
    page.screenshot(path=str(shots / "5-bad-upload.png"), full_page=True)


def test_usable_at_phone_width_and_every_control_labelled(browser: Browser, stack: Stack) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800})
    phone = context.new_page()
    phone.goto(stack.url)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 376
    unlabelled = phone.evaluate(
        "() => [...document.querySelectorAll('input, select')]"
        ".filter(e => !e.closest('label') && !e.labels?.length).map(e => e.id)"
    )
    assert unlabelled == []
    phone.focus("#drop")
    phone.keyboard.press("Tab")
    assert phone.evaluate("document.activeElement.id") == "file"
    context.close()


def test_docs_render_offline(browser: Browser, stack: Stack) -> None:
    """Swagger UI renders the API with every request kept on the service's own address."""
    context = browser.new_context()
    page = context.new_page()
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(stack.url) else elsewhere.append(r.url))
    page.goto(f"{stack.url}/docs")
    expect(page.locator(".swagger-ui .title").first).to_contain_text("ddnm-service", timeout=20_000)
    assert elsewhere == []
    context.close()


def test_the_key_is_asked_once_and_kept_for_the_session(
    browser: Browser, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = ENV | {"DDNM_API_KEYS": "web-test-key"}
    logs = tmp_path_factory.mktemp("keyed-web")
    with Stack(port=free_port(), workers=1, env=env, log_dir=logs) as keyed:
        context = browser.new_context()
        page = context.new_page()
        asked: list[str] = []

        def answer(dialog) -> None:  # type: ignore[no-untyped-def]
            asked.append(dialog.message)
            dialog.accept("web-test-key")

        page.on("dialog", answer)
        page.goto(keyed.url)
        page.set_input_files("#file", str(photo(tmp_path, 8)))
        expect(page.locator("#cost")).to_contain_text("network evaluations")  # after the key
        page.select_option("#factor", "2")
        expect(page.locator("#cost")).to_contain_text("Result 16 x 16")
        assert asked == ["This service needs an API key:"]  # once, then kept
        assert page.evaluate("sessionStorage.getItem('ddnm-key')") == "web-test-key"
        context.close()
