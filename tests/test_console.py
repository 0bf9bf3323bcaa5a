"""The web console (issue 12, points 2-4).

Over HTTP (SQLite and PostgreSQL): sign in and out, cookie flags, CSRF on every state-changing request the
cookie authenticates, a revoked key's session refused, security and cache headers, 404 pages. In Debian's
Chromium, driven by Playwright (`executable_path`, never a downloaded browser): the whole life of a
conversation against a real agent server and the fake LLM, the shared view signed out, and how fast the
list (100 conversations) renders and events reach the page. Timings are printed, never asserted.

Screenshots go to the test's temporary folder; with THREADLINE_CONSOLE_SCREENSHOTS=1 also to docs/console/.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, refused_within, wait_for
from tests.support.records import message_event
from threadline.auth import service as auth
from threadline.auth.sessions import SESSION_COOKIE

API = "/api/v1/app-conversations"
CHROMIUM = Path(os.environ.get("THREADLINE_TEST_CHROMIUM", "/usr/bin/chromium"))
DOCS = Path(__file__).resolve().parent.parent / "docs" / "console"
DESKTOP = {"width": 1100, "height": 820}
PHONE = {"width": 390, "height": 844}


# -- over HTTP ---------------------------------------------------------------------------------------


def sign_in(server: LiveServer, key: str) -> tuple[httpx.Client, httpx.Response, str]:
    """A client signed in through the form; returns it, the sign-in answer and the session's CSRF token."""
    client = httpx.Client(base_url=server.base_url, timeout=30)
    form = client.get("/sign-in")
    assert form.status_code == 200, form.text
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert nonce is not None
    answer = client.post("/sign-in", data={"csrf_token": nonce.group(1), "api_key": key, "next": "/costs"})
    assert answer.status_code == 303, answer.text
    page = client.get("/conversations")
    assert page.status_code == 200, page.text
    csrf = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert csrf is not None
    return client, answer, csrf.group(1)


def is_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def session_cookie(response: httpx.Response) -> str:
    (header,) = [h for h in response.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "=")]
    return header


def test_sign_in_sets_a_strict_http_only_cookie_without_the_key(server: LiveServer) -> None:
    _, key = server.user("ada")
    client, answer, _ = sign_in(server, key)
    assert answer.headers["location"] == "/costs"
    cookie = session_cookie(answer)
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain HTTP here
    assert key not in cookie and auth.hash_key(key) not in cookie
    # Behind a TLS proxy (X-Forwarded-Proto from a trusted address): Secure.
    with httpx.Client(base_url=server.base_url, headers={"X-Forwarded-Proto": "https"}) as tls:
        form = tls.get("/sign-in")
        assert "secure" in [p.strip().lower() for p in form.headers["set-cookie"].split(";")]
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert nonce is not None
        # (the client keeps Secure cookies for https only: send the form's cookie by hand)
        https_answer = tls.post(
            "/sign-in",
            data={"csrf_token": nonce.group(1), "api_key": key},
            cookies={"threadline_sign_in": nonce.group(1)},
        )
    assert https_answer.status_code == 303, https_answer.text
    assert "secure" in [part.strip().lower() for part in session_cookie(https_answer).split(";")]
    # The cookie authenticates the API, the SSE streams included.
    assert client.get(f"{API}/search").status_code == 200
    with client.stream("GET", f"{API}/stream") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    client.close()


def test_a_wrong_key_or_a_foreign_form_does_not_sign_in(server: LiveServer) -> None:
    _, key = server.user("ada")
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        form = client.get("/sign-in")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert nonce is not None
        wrong = client.post("/sign-in", data={"csrf_token": nonce.group(1), "api_key": "tl_nope"})
        assert wrong.status_code == 401 and "the API key is unknown or revoked" in wrong.text
        assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    # A form posted from elsewhere has no sign-in cookie of this browser (login CSRF).
    with httpx.Client(base_url=server.base_url, timeout=30) as other:
        forged = other.post("/sign-in", data={"csrf_token": "x", "api_key": key})
        assert forged.status_code == 400 and SESSION_COOKIE not in forged.headers.get("set-cookie", "")
    # Only paths of this server are followed after signing in.
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        form = client.get("/sign-in?next=//evil.example/x")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert nonce is not None and 'value="/conversations"' in form.text
        answer = client.post(
            "/sign-in", data={"csrf_token": nonce.group(1), "api_key": key, "next": "https://evil.example/"}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/conversations"


def test_cookie_requests_that_change_something_need_the_csrf_token(server: LiveServer) -> None:
    user, key = server.user("ada")
    conversation = server.conversation(user.id, title="before")
    cid = conversation["id"]
    client, _, csrf = sign_in(server, key)
    # Without the token: refused, whatever the method, before anything happens.
    is_problem(client.patch(f"{API}/{cid}", json={"title": "forged"}), 403)
    is_problem(client.post(f"{API}/{cid}/send-message", json={"content": [{"type": "text", "text": "x"}]}), 403)
    is_problem(client.delete(f"{API}/{cid}"), 403)
    is_problem(client.patch(f"{API}/{cid}", json={"title": "forged"}, headers={"X-CSRF-Token": "0" * 64}), 403)
    is_problem(client.post(f"/api/v1/sandboxes/{'a' * 32}/pause", headers={"X-CSRF-Token": ""}), 403)
    with server.client(key) as keyed:
        assert keyed.get(f"{API}/{cid}").json()["title"] == "before"
        # A header key needs no CSRF token (no browser sends one by itself).
        assert keyed.patch(f"{API}/{cid}", json={"title": "by key"}).status_code == 200
    # With it: done.
    patched = client.patch(f"{API}/{cid}", json={"title": "by cookie"}, headers={"X-CSRF-Token": csrf})
    assert patched.status_code == 200 and patched.json()["title"] == "by cookie"
    # A header key wins over a cookie sent beside it (and needs no token).
    with server.client(key, cookies=dict(client.cookies)) as both:
        assert both.patch(f"{API}/{cid}", json={"title": "both"}).status_code == 200
    # Another session's token is no good for this one.
    other, _, other_csrf = sign_in(server, key)
    is_problem(client.delete(f"{API}/{cid}", headers={"X-CSRF-Token": other_csrf}), 403)
    assert client.delete(f"{API}/{cid}", headers={"X-CSRF-Token": csrf}).status_code == 200
    client.close()
    other.close()


def test_a_revoked_key_ends_its_sessions_and_signing_out_ends_the_cookie(server: LiveServer) -> None:
    user, key = server.user("ada")
    client, _, csrf = sign_in(server, key)
    keys = server.run(auth.list_keys(server.ctx.db))
    (key_id,) = [k.id for k in keys if k.user_id == user.id]
    server.run(auth.revoke_key(server.ctx.db, key_id))
    refused_within(1.0, lambda: client.get(f"{API}/search").status_code == 401, "the revoked key's session")
    is_problem(client.get(f"{API}/search"), 401)
    page = client.get("/conversations")
    assert page.status_code == 303 and page.headers["location"].startswith("/sign-in")

    _, key2 = server.run(auth.create_key(server.ctx.db, user.id))
    client2, _, csrf2 = sign_in(server, key2)
    # Sign out needs the page's token too.
    assert client2.post("/sign-out", data={"csrf_token": csrf}).status_code == 400
    out = client2.post("/sign-out", data={"csrf_token": csrf2})
    assert out.status_code == 303 and out.headers["location"] == "/sign-in"
    assert "max-age=0" in session_cookie(out).lower()
    assert client2.get("/conversations").status_code == 303
    client.close()
    client2.close()


def test_pages_have_strict_headers_and_unknown_paths_answer_404_pages(server: LiveServer) -> None:
    user, key = server.user("ada")
    cid = server.conversation(user.id, title="t")["id"]
    client, _, _ = sign_in(server, key)
    dashed = f"{cid[:8]}-{cid[8:12]}-{cid[12:16]}-{cid[16:20]}-{cid[20:]}"
    for path in (
        "/",
        "/conversations",
        "/conversations/new",
        "/costs",
        f"/conversations/{cid}",
        f"/conversations/{dashed}",
        f"/shared/{cid}",
    ):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text and " style=" not in page.text and " on" + "click=" not in page.text
    asset = re.search(r'src="(/console/static/[0-9a-f]+/list\.js)"', client.get("/conversations").text)
    assert asset is not None
    static = client.get(asset.group(1))
    assert static.status_code == 200 and "immutable" in static.headers["cache-control"]
    assert static.headers["content-type"].startswith("text/javascript")
    assert client.get(asset.group(1), headers={"If-None-Match": static.headers["etag"]}).status_code == 304

    html = {"Accept": "text/html"}
    for path in ("/nothing", "/conversations/not-an-id", f"/conversations/{'0' * 32}", "/console/static/x/y.js"):
        missing = client.get(path, headers=html)
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html"), path
        assert "content-security-policy" in missing.headers
    # The API keeps answering problems, browser or not; and the console shadows none of its paths.
    is_problem(client.get("/api/v1/nothing", headers=html), 404)
    is_problem(httpx.get(f"{server.base_url}/nothing"), 404)
    for path in ("/alive", "/health", "/server_info", "/openapi.json", "/docs"):
        assert httpx.get(f"{server.base_url}{path}").status_code == 200, path
    # Signed out: pages send to the sign-in page; the shared page is for anyone.
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert anonymous.get("/conversations").headers["location"] == "/sign-in?next=/conversations"
        assert anonymous.get(f"/shared/{cid}").status_code == 200
        is_problem(anonymous.get(f"{API}/search"), 401)
    client.close()


def test_a_session_sees_only_its_own_user_s_conversations(server: LiveServer) -> None:
    alice, _ = server.user("alice")
    _, bob_key = server.user("bob")
    cid = server.conversation(alice.id, title="alice's")["id"]
    bob, _, csrf = sign_in(server, bob_key)
    page = bob.get(f"/conversations/{cid}")
    assert page.status_code == 404 and "alice's" not in page.text
    assert page.text.replace(cid, "X") == bob.get(f"/conversations/{'1' * 32}").text.replace("1" * 32, "X")
    is_problem(bob.get(f"/api/v1/conversation/{cid}/events/stream"), 404)
    is_problem(bob.patch(f"{API}/{cid}", json={"title": "bob's"}, headers={"X-CSRF-Token": csrf}), 404)
    assert bob.get(f"{API}/search").json()["items"] == []
    bob.close()


def test_every_console_file_ships_in_the_package() -> None:
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["threadline"]
    package = root / "src" / "threadline"
    files = [p.relative_to(package).as_posix() for p in (package / "console").rglob("*") if p.is_file()]
    shipped = [f for f in files if f.endswith(".py") or any(fnmatch.fnmatch(f, pattern) for pattern in patterns)]
    assert (package / "console" / "__init__.py").exists()
    assert sorted(shipped) == sorted(f for f in files if "__pycache__" not in f)


# -- in the browser ----------------------------------------------------------------------------------


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}: scripts/test installs Debian's `chromium` when run as root"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], None]:
    publish = os.environ.get("THREADLINE_CONSOLE_SCREENSHOTS") == "1"

    def take(page: Any, name: str) -> None:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if publish:
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS / f"{name}.png")

    return take


def browser_sign_in(page: Any, server: LiveServer, key: str, path: str = "/conversations") -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.base_url}{path}")
    expect(page).to_have_url(re.compile(r"/sign-in\?next="))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


_ERRORS: dict[int, list[str]] = {}


def problems_of(page: Any) -> list[str]:
    """Script errors and Content-Security-Policy violations the page reported."""
    return _ERRORS.setdefault(id(page), [])


def watch(page: Any) -> Any:
    errors = problems_of(page)
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    return page


@pytest.mark.agent
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_life_of_a_conversation_in_the_browser(
    agent_server_factory: Callable[..., LiveServer], fake_llm: Any, browser: Any, shots: Callable[[Any, str], None]
) -> None:
    from playwright.sync_api import expect

    server = agent_server_factory(stream_poll_seconds=0.2)
    # The agent's first step runs a command (then it finishes): the timeline shows the command and its output.
    fake_llm.enqueue_tool_call("terminal", {"command": "echo hello-from-the-console"})
    _, key = server.user("ada")
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    context.set_default_timeout(30_000)
    page = watch(context.new_page())
    page.on("dialog", lambda dialog: dialog.accept())

    # Sign in.
    page.goto(f"{server.base_url}/conversations")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=%2Fconversations|/sign-in\?next=/conversations"))
    shots(page, "sign-in")
    page.get_by_label("API key").fill("tl_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#error")).to_contain_text("the API key is unknown or revoked")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/conversations$"))
    expect(page.locator("#summary")).to_contain_text("No conversations yet")

    # Start one, watching its steps.
    page.get_by_role("link", name="New conversation").first.click()
    page.get_by_label("First message").fill("Say hello and finish.")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#done")).to_be_visible(timeout=150_000)
    steps = page.locator("#steps li").evaluate_all("items => items.map(i => i.dataset.status)")
    assert steps[0] == "WORKING" and steps[-1] == "READY" and "STARTING_CONVERSATION" in steps, steps
    shots(page, "start")
    page.get_by_role("link", name="Open the conversation").click()
    expect(page).to_have_url(re.compile(r"/conversations/[0-9a-f]{32}$"))
    cid = page.url.rsplit("/", 1)[-1]

    # Its events arrive: the first message, the agent's action and output, and the finished status.
    timeline = page.locator("#timeline")
    expect(timeline.locator(".ev.msg.user")).to_contain_text("Say hello and finish.", timeout=60_000)
    command = timeline.locator(".ev.action pre.cmd").filter(has_text="$ echo hello-from-the-console")
    expect(command).to_be_visible(timeout=90_000)
    expect(timeline.locator(".ev.output pre.out").filter(has_text="hello-from-the-console").first).to_be_visible(
        timeout=90_000
    )
    expect(page.locator("#status")).to_have_text("finished", timeout=90_000)
    expect(page.locator("#cost")).not_to_have_text("$0", timeout=60_000)

    # Send a message.
    page.get_by_label("Message the agent").fill("And now say goodbye.")
    page.get_by_role("button", name="Send").click()
    expect(timeline.locator(".ev.msg.user").filter(has_text="And now say goodbye.")).to_be_visible(timeout=60_000)

    # Edit the title and tags.
    edit = page.locator("#edit")
    edit.get_by_label("Title").fill("Console test")
    edit.get_by_label("Tags").fill("team:core, env:test")
    edit.get_by_role("button", name="Save").click()
    expect(page.locator("#title")).to_have_text("Console test")
    with server.client(key) as client:
        wait_for(lambda: client.get(f"{API}/{cid}").json()["tags"] == {"team": "core", "env": "test"}, 10)
        # Remove one tag: the other stays.
        edit.get_by_label("Tags").fill("team:core")
        edit.get_by_role("button", name="Save").click()
        wait_for(lambda: client.get(f"{API}/{cid}").json()["tags"] == {"team": "core"}, 10, what="a tag removed")

        # Share it.
        page.get_by_role("button", name="Make public").click()
        expect(page.locator("#share-link")).to_be_visible()
        share_url = page.locator("#share-url").inner_text()
        assert share_url.endswith(f"/shared/{cid}")
        assert client.get(f"{API}/{cid}").json()["public"] is True
    shots(page, "conversation")
    page.emulate_media(color_scheme="dark")
    shots(page, "conversation-dark")
    page.emulate_media(color_scheme="light")

    # The shared link, signed out, in a fresh browser context.
    reader = browser.new_context(viewport=DESKTOP, color_scheme="light")
    shared = watch(reader.new_page())
    shared.goto(share_url)
    expect(shared.locator("#title")).to_have_text("Console test")
    expect(shared.locator("#timeline .ev.msg.user").first).to_contain_text("Say hello and finish.")
    expect(shared.locator("#send")).to_have_count(0)
    expect(shared.locator("#share")).to_have_count(0)
    assert not [c for c in reader.cookies() if c["name"] == SESSION_COOKIE]
    shots(shared, "shared")

    # The list and the cost view.
    page.goto(f"{server.base_url}/conversations")
    expect(page.locator("#list > li")).to_have_count(1)
    expect(page.locator("#list > li a.title")).to_have_text("Console test")
    expect(page.locator("#list .badge")).to_have_text("finished")
    shots(page, "list")
    page.goto(f"{server.base_url}/costs")
    expect(page.locator("body[data-rendered]")).to_have_count(1)
    expect(page.locator("#total")).to_contain_text("over 1 conversation")
    expect(page.locator("#chart-days svg rect")).not_to_have_count(0)
    expect(page.locator("#chart-models svg")).to_contain_text("openai/fake-model")
    shots(page, "costs")
    phone = watch(context.new_page())
    phone.set_viewport_size(PHONE)
    phone.goto(f"{server.base_url}/conversations/{cid}")
    expect(phone.locator("#title")).to_have_text("Console test")
    shots(phone, "conversation-phone")
    phone.close()

    # Keyboard: the skip link is the first stop, the navigation follows.
    page.goto(f"{server.base_url}/conversations")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()

    # Make it private again: the open shared page's stream ends and the page says why, in the API's words.
    page.goto(f"{server.base_url}/conversations/{cid}")
    page.get_by_role("button", name="Make private").click()
    expect(page.locator("#share-link")).to_be_hidden()
    shared.reload()
    expect(shared.locator("#error")).to_contain_text("404")
    reader.close()

    # Delete it.
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/conversations$"))
    expect(page.locator("#summary")).to_contain_text("No conversations yet")
    with server.client(key) as client:
        is_problem(client.get(f"{API}/{cid}"), 404)

    # Sign out.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    page.goto(f"{server.base_url}/conversations")
    expect(page).to_have_url(re.compile(r"/sign-in\?next="))
    assert not problems_of(page), problems_of(page)
    context.close()


def test_the_list_of_100_renders_fast_and_events_reach_the_page_live(
    server_factory: Callable[..., LiveServer], browser: Any
) -> None:
    from playwright.sync_api import expect

    server = server_factory(stream_poll_seconds=0.2)
    user, key = server.user("ada")
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
    for i in range(100):
        server.conversation(
            user.id,
            title=f"Conversation {i:03d}",
            selected_repository="acme/widgets" if i % 2 else None,
            tags={"batch": "a" if i % 3 else "b"},
            created_at=base + dt.timedelta(minutes=i),
        )
    context = browser.new_context(viewport=DESKTOP)
    page = watch(context.new_page())
    browser_sign_in(page, server, key)
    expect(page.locator("#list > li")).to_have_count(100)
    timings = []
    for _ in range(6):
        page.goto(f"{server.base_url}/conversations")
        expect(page.locator("body[data-rendered]")).to_have_count(1)
        assert page.locator("#list > li").count() == 100
        timings.append(float(page.locator("body").get_attribute("data-rendered") or "nan"))
    cold, warm = timings[0], statistics.median(timings[1:])
    print(f"\nconsole list, 100 conversations, navigation start -> rendered: first {cold:.0f} ms, median {warm:.0f} ms")
    expect(page.locator("#list > li").first.locator("a.title")).to_have_text("Conversation 099")

    # Filters: title, tags, repository, dates; keyset paging is the API's (next_page_id).
    filters = page.locator("#filters")
    filters.get_by_label("Title contains").fill("Conversation 01")
    filters.get_by_role("button", name="Search").click()
    expect(page.locator("#list > li")).to_have_count(10)
    filters.get_by_label("Title contains").fill("")
    filters.get_by_label("Tags").fill("batch:b")
    filters.get_by_label("Repository").fill("acme/widgets")
    filters.get_by_role("button", name="Search").click()
    # i odd and i % 3 == 0: 3, 9, 15, ..., 99
    expect(page.locator("#list > li")).to_have_count(17)
    filters.get_by_role("button", name="Clear").click()
    expect(page.locator("#list > li")).to_have_count(100)

    # Live without a reload: a change made elsewhere shows in the list.
    first_id = page.locator("#list > li").first.get_attribute("data-id")
    with server.client(key) as client:
        assert client.patch(f"{API}/{first_id}", json={"title": "Renamed elsewhere"}).status_code == 200
    expect(page.locator(f'#list > li[data-id="{first_id}"] a.title')).to_have_text("Renamed elsewhere")
    # More than a page: the "Load more" button follows next_page_id.
    for i in range(5):
        server.conversation(user.id, title=f"Extra {i}", created_at=base - dt.timedelta(days=1, minutes=i))
    page.reload()
    expect(page.locator("#list > li")).to_have_count(100)
    page.get_by_role("button", name="Load more").click()
    expect(page.locator("#list > li")).to_have_count(105)
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()

    # Event latency: from the agent's callback to the event on the page.
    sandbox_id, session_key = server.sandbox(user.id)
    cid = server.conversation(user.id, sandbox_id=sandbox_id, title="Live")["id"]
    page.goto(f"{server.base_url}/conversations/{cid}")
    expect(page.locator("#stream-state")).to_have_attribute("data-state", "live")
    latencies = []
    with httpx.Client(base_url=server.base_url, headers={"X-Session-API-Key": session_key}, timeout=30) as agent:
        for i in range(20):
            event = message_event(f"live message {i}", base + dt.timedelta(hours=1, seconds=i))
            sent = time.time() * 1000
            assert agent.post(f"/api/v1/webhooks/events/{cid}", json=[event]).status_code == 200
            shown = page.locator(f'[data-event-id="{event["id"]}"]')
            expect(shown).to_contain_text(f"live message {i}")
            latencies.append(float(shown.get_attribute("data-shown-at") or "nan") - sent)
    print(
        f"console event latency, callback sent -> event shown: p50 {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms"
    )
    assert not problems_of(page), problems_of(page)
    context.close()
