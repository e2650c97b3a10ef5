"""The console's flows in chromium, against a real herd and a simulated device (see conftest.py)."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from conftest import DESKTOP, PHONE, expect_page, save_screenshot, sign_in

LIVE_SECONDS = 30


def goto(page, herd, path: str, what: str, errors):
    """Opens a console page; fails when it answers 404."""
    response = page.goto(herd.url(path))
    assert response is not None, f"no response for {path}"
    if response.status == 404:
        errors.forget("404")  # chromium logs the 404 document as a console error
    expect_page(response.status, what, path)
    return response


def device_count(herd) -> int:
    count, cursor = 0, None
    while True:
        answer = herd.api("GET", "/devices?limit=100" + (f"&cursor={cursor}" if cursor else ""))
        count += len(answer["items"])
        cursor = answer.get("nextCursor")
        if not cursor:
            return count


def commands_of(herd, device_id: str) -> list:
    return herd.api("GET", f"/devices/{device_id}/commands")["items"]


def cpu_points(page) -> int:
    series = page.locator('svg.chart[data-metric="cpu"] polyline.series')
    if series.count() == 0:
        return 0
    return int(series.first.get_attribute("data-points") or 0)


# ---------------------------------------------------------------------------------------------


def test_first_start_sets_up_a_user_with_the_admin_token(page, herd, device):
    response = page.goto(herd.url("/"))
    assert response.status == 200
    assert page.url.startswith(herd.url("/ui/sign-in")), page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    save_screenshot(page, "sign-in-1280")

    page.get_by_role("link", name="Set up a user with the admin token").click()
    page.wait_for_url(herd.url("/ui/setup"))
    save_screenshot(page, "setup-1280")
    token = (herd.data_dir / "initial-admin-token").read_text().strip()
    page.get_by_label("Admin token").fill(token)
    page.get_by_label("New username").fill("first-admin")
    page.get_by_label("Password (at least 8 characters)", exact=True).fill("first-admin-password")
    page.get_by_label("Password again", exact=True).fill("first-admin-password")
    page.get_by_role("button", name="Create the user and sign in").click()

    page.wait_for_url(herd.url("/ui/"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Fleet overview")
    expect(page.locator("#stat-total")).to_have_text(str(device_count(herd)))
    assert device_count(herd) >= 1


def test_main_flow_chart_screenshot_command_revocation_and_sign_out(new_page, browser_errors, herd, admin_user, device,
                                                                   browser):
    issued = herd.api("POST", f"/devices/{device.id}/certificates")
    certificate_id = issued["certificate"]["id"]

    page = new_page()
    sign_in(page, herd, *admin_user)
    expect(page.get_by_role("heading", level=1)).to_have_text("Fleet overview")

    with page.expect_navigation():
        page.get_by_role("navigation", name="Sections").get_by_role("link", name="Devices", exact=True).click()
    assert page.url == herd.url("/ui/devices"), page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("Devices")
    with page.expect_navigation() as navigation:
        page.get_by_role("link", name=device.name, exact=True).click()
    assert page.url == herd.url(f"/ui/devices/{device.id}"), page.url
    if navigation.value.status == 404:
        browser_errors.forget("404")
    expect_page(navigation.value.status, "the device page", f"/ui/devices/{device.id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(device.name)

    # The CPU chart has the device's samples (reload until the first one is there).
    deadline = time.monotonic() + 20
    while cpu_points(page) < 1 and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    assert cpu_points(page) >= 1, f"no CPU series with data-points >= 1 (device errors: {device.errors})"

    # A screenshot command, answered by the device; the list updates without a reload.
    page.get_by_label("Command").select_option("screenshot")
    with page.expect_navigation():  # the form's POST, then its 303 back to the device page
        page.get_by_role("button", name="Send command").click()
    page.evaluate("() => { window.__herdNoReload = true; }")
    commands = page.locator("#commands")
    expect(commands).to_be_visible()
    # The device holds the screenshot until it is released here, so the page after the redirect
    # shows it unfinished; the release then reaches the page only through the event stream.
    first_render = commands.inner_text()
    assert "succeeded" not in first_render, f"the command had finished before the page showed it: {first_render}"
    device.screenshot_release.set()
    expect(commands).to_contain_text("succeeded", timeout=LIVE_SECONDS * 1000)
    assert page.evaluate("() => window.__herdNoReload === true"), "the page reloaded: the update was not live"
    page.wait_for_function(
        "() => { const img = document.querySelector('#commands img.screenshot');"
        " return img && img.complete && img.naturalWidth > 0; }",
        timeout=LIVE_SECONDS * 1000,
    )
    screenshot_commands = [c for c in commands_of(herd, device.id) if c["type"] == "screenshot"]
    assert screenshot_commands and screenshot_commands[0]["state"] == "succeeded", screenshot_commands

    # Revoke the certificate issued above.
    revoked_badges = page.locator(".badge", has_text=re.compile(r"^\s*revoked\s*$"))
    before = revoked_badges.count()
    page.on("dialog", lambda dialog: dialog.accept())
    reason = page.get_by_label("Reason")
    values = [v for v in reason.first.locator("option").evaluate_all("os => os.map(o => o.value)") if v]
    assert values, "the Reason select offers no reason"
    reason.first.select_option("key_compromise" if "key_compromise" in values else values[0])
    with page.expect_navigation():
        page.get_by_role("button", name="Revoke").first.click()
    expect(revoked_badges).to_have_count(before + 1)
    certificates = herd.api("GET", f"/devices/{device.id}/certificates")["items"]
    assert [c["status"] for c in certificates if c["id"] == certificate_id] == ["revoked"], certificates

    # Sign out: back at sign-in, and the old session no longer opens the console.
    old_cookies = page.context.cookies()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/ui/sign-in"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    replay = browser.new_context(viewport=DESKTOP)
    try:
        replay.add_cookies(old_cookies)
        other = replay.new_page()
        other.goto(herd.url("/ui/"))
        assert "/ui/sign-in" in other.url, f"the old session still opens the console: {other.url}"
    finally:
        replay.close()


def test_viewer_sees_no_controls_and_the_server_refuses_a_forged_command(page, browser_errors, herd, viewer_user,
                                                                         device):
    herd.api("POST", f"/devices/{device.id}/certificates")  # an active one, that an operator could revoke
    sign_in(page, herd, *viewer_user)
    expect(page.locator(".who .role")).to_have_text("viewer")
    goto(page, herd, f"/ui/devices/{device.id}", "the device page", browser_errors)
    expect(page.get_by_role("heading", level=1)).to_have_text(device.name)
    expect(page.get_by_role("button", name="Send command")).to_have_count(0)
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)

    before = len(commands_of(herd, device.id))
    csrf = page.locator('input[name="_csrf"]').first.get_attribute("value")
    assert csrf, "no _csrf field on the page"
    answer = page.request.post(herd.url(f"/ui/devices/{device.id}/commands"),
                               form={"_csrf": csrf, "type": "screenshot"}, max_redirects=0)
    assert answer.status == 403, f"a viewer's command answered {answer.status}"
    assert len(commands_of(herd, device.id)) == before, "the viewer's forged command was queued"


def test_page_weight_of_the_first_overview_load(new_page, browser, herd, admin_user, device):
    signing_in = new_page()
    sign_in(signing_in, herd, *admin_user)
    cookies = signing_in.context.cookies()

    page = new_page()  # a fresh context: nothing cached
    page.context.add_cookies(cookies)
    responses = []
    page.on("response", lambda response: responses.append(response))
    page.goto(herd.url("/ui/"), wait_until="load")
    expect(page.get_by_role("heading", level=1)).to_have_text("Fleet overview")

    sizes = {}
    for response in responses:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            continue  # the live-update stream never ends; it is not part of the page's weight
        if 300 <= response.status < 400:
            continue
        sizes[response.url] = len(response.body())
    total = sum(sizes.values())
    listing = "\n".join(f"  {size:>8} B  {url}" for url, size in sizes.items())
    print(f"first load of the overview: {total} B\n{listing}")
    kinds = " ".join(sizes)
    for needed in ("/ui/", "console.css", "console.js", "herd.svg"):
        assert needed in kinds, f"the overview did not fetch {needed}:\n{listing}"
    assert total < 200 * 1024, f"the overview weighs {total} B (limit 200 KB):\n{listing}"


# Every page reachable from the navigation and the sub-navigations. A page whose address is
# None is found by its link text in a navigation (`nav`) of the section pages.
PAGES = [
    ("overview", "/ui/", "Overview"),
    ("devices", "/ui/devices", "Devices"),
    ("device", None, None),
    ("alerts", "/ui/alerts", "Alerts"),
    ("rules", "/ui/alerts/rules", re.compile(r"rules", re.I)),
    ("certificates", "/ui/certificates", "Certificates"),
    ("updates", "/ui/updates", "Updates"),
    ("enrollment-tokens", "/ui/enrollment", "Enrollment & access"),
    ("api-tokens", None, re.compile(r"API tokens", re.I)),
    ("users", None, re.compile(r"^\s*users\s*$", re.I)),
    ("webhooks", None, re.compile(r"webhooks", re.I)),
    ("events", "/ui/events", "Events"),
]
SECTION_PAGES = ["/ui/", "/ui/alerts", "/ui/certificates", "/ui/updates", "/ui/enrollment", "/ui/events"]
PHONE_TOO = {"overview", "device"}


def link_in_navigation(page, herd, text, errors) -> tuple[str | None, list[str]]:
    """The address of the first link named `text` in any navigation of the section pages, and
    the section pages that answered 404 (not merged yet) on the way."""
    missing = []
    for section in SECTION_PAGES:
        response = page.goto(herd.url(section))
        if response is not None and response.status == 404:
            errors.forget("404")
            missing.append(section)
            continue
        assert response is not None and response.status == 200, f"{section} answered {response and response.status}"
        links = page.locator("nav a").filter(has_text=text)
        if links.count() > 0:
            return links.first.get_attribute("href"), missing
    return None, missing


@pytest.mark.parametrize("name,path,link", PAGES, ids=[p[0] for p in PAGES])
def test_page_renders_without_errors(admin_page, browser_errors, herd, device, name, path, link):
    page = admin_page
    if name == "device":
        path = f"/ui/devices/{device.id}"
    elif path is None:
        path, missing = link_in_navigation(page, herd, link, browser_errors)
        if path is None and missing:
            expect_page(404, f"the {name} page", f"(its link {link.pattern!r} may be on {', '.join(missing)})")
        assert path, f"no link {link.pattern!r} in any navigation of {SECTION_PAGES}"
    if isinstance(link, str) and name != "overview":
        # The page is reachable from the header's navigation.
        page.goto(herd.url("/ui/"))
        nav = page.get_by_role("navigation", name="Sections")
        expect(nav.get_by_role("link", name=link, exact=True)).to_have_attribute("href", path)
    elif name == "rules":
        section = page.goto(herd.url("/ui/alerts"))
        if section.status == 404:
            browser_errors.forget("404")
        expect_page(section.status, "the alerts page", "/ui/alerts")
        expect(page.locator("nav a").filter(has_text=link).first).to_have_attribute("href", path)

    response = goto(page, herd, path, f"the {name} page", browser_errors)
    assert response.status == 200, f"{path} answered {response.status}"
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    save_screenshot(page, f"{name}-1280")
    if name in PHONE_TOO:
        page.set_viewport_size(PHONE)
        page.reload()
        save_screenshot(page, f"{name}-390")
        page.set_viewport_size(DESKTOP)


def test_keyboard_reaches_skip_link_then_navigation(admin_page, herd):
    page = admin_page
    page.goto(herd.url("/ui/"))
    focused = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused.append(page.evaluate(
            "() => { const e = document.activeElement;"
            " return [e.tagName, (e.getAttribute('aria-label') || e.textContent || '').trim(),"
            " !!e.closest('nav[aria-label=\"Sections\"]')]; }"))
    assert focused[0][1] == "Skip to content", f"the first Tab reached {focused[0]}"
    labels = ["Overview", "Devices", "Alerts", "Certificates", "Updates", "Enrollment & access", "Events"]
    nav_focus = [text for _, text, in_nav in focused if in_nav]
    assert nav_focus[: len(labels)] == labels, f"Tab order after the skip link: {focused}"
    first_nav = next(i for i, (_, _, in_nav) in enumerate(focused) if in_nav)
    between = [text for _, text, _ in focused[1:first_nav]]
    assert between in ([], ["herd: overview"]), f"between the skip link and the navigation: {between}"

    # The skip link moves the focus to the content.
    page.goto(herd.url("/ui/"))
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
