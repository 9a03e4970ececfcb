"""Headless Chromium driven over the DevTools protocol, with aiohttp's websocket
client: enough to open a page at a given size, read it and take a screenshot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", targetId=self.target)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session=self.session, **params)

    async def goto(self, url: str) -> None:
        """Opens ``url`` and returns once the document it lands on (redirects
        followed) has loaded: reading or acting on it right away is safe."""
        async with self.navigation():
            await self.send("Page.navigate", url=url)

    @contextlib.asynccontextmanager
    async def navigation(self, within: float = 30.0) -> AsyncIterator[None]:
        """Around an action that loads a new document (a form submitted, a link
        followed): waits until a new document has replaced the current one and
        finished loading. The current document is marked first, so the old page
        can never pass for the new one, however slow the machine."""
        await self.evaluate("document.anteroomPrevious = true")
        yield
        await self.wait_for(
            "document.anteroomPrevious === undefined && document.readyState === 'complete'",
            within,
        )

    async def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The expression's value (a promise's, with ``await_promise``); RuntimeError
        if it threw (an action on a page that is not there is an error, never a
        silent no-op)."""
        r = await self.send(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=await_promise,
        )
        if "exceptionDetails" in r:
            details = r["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"{expression[:80]!r} threw: {text}")
        return r.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> Path:
        r = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(r["data"]))
        return path

    async def wait_for(self, expression: str, within: float = 20.0) -> Any:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            # navigating (no context yet) or the page not there yet (the expression threw)
            with contextlib.suppress(RuntimeError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"page never satisfied {expression!r}")
            await asyncio.sleep(0.2)


class Browser:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def __aenter__(self) -> Browser:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium not found: apt-get install -y chromium")
        self._profile = tempfile.TemporaryDirectory(prefix="anteroom-chromium-")
        self.proc = await asyncio.create_subprocess_exec(
            exe,
            *FLAGS,
            f"--user-data-dir={self._profile.name}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        ws_url = None
        while ws_url is None:
            line = await asyncio.wait_for(self.proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError("chromium exited before DevTools came up")
            m = re.search(rb"DevTools listening on (ws://\S+)", line)
            ws_url = m.group(1).decode() if m else None
        self._drain = asyncio.create_task(self._drain_stderr())
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.http.close()
        self.proc.terminate()
        await self.proc.wait()
        self._drain.cancel()
        self._profile.cleanup()

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is None or fut.done():
                continue
            if "error" in data:
                fut.set_exception(RuntimeError(data["error"].get("message", "CDP error")))
            else:
                fut.set_result(data.get("result", {}))

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, 30)

    async def page(self, width: int, height: int, mobile: bool = False) -> Page:
        """A new tab in its own browser context: its own cookies, like a private window."""
        context = await self.send("Target.createBrowserContext")
        target = await self.send(
            "Target.createTarget", url="about:blank", browserContextId=context["browserContextId"]
        )
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"], target["targetId"])
        await page.send("Page.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2 if mobile else 1,
            mobile=mobile,
        )
        return page


def shots_dir(tmp_path: Path) -> Path:
    """Screenshots go to ANTEROOM_SCREENSHOTS when set (to look at them), else tmp."""
    d = Path(os.environ.get("ANTEROOM_SCREENSHOTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d
