"""The demo origin: a tiny shop behind the waiting room, and the static
``/tickets/`` pages nginx serves itself.

``python -m devstack.origin --port N`` runs it alone (compose's ``origin`` service).
"""

from __future__ import annotations

import argparse
import html

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Demo shop</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;max-width:720px;margin:0 auto;padding:24px;color:#1d2430}}
a{{color:#2d5bd7}} .item{{border:1px solid #ddd;border-radius:12px;padding:12px 16px;margin:8px 0}}
button{{font:inherit;padding:8px 14px;border-radius:8px;border:1px solid #2d5bd7;
background:#2d5bd7;color:#fff}}
</style>{head}</head><body data-origin="demo">
<h1>{title}</h1>{body}</body></html>"""


def origin_page(path: str) -> tuple[int, str]:
    if path == "/":
        body = (
            "<p>This page is never queued. The shop is behind the waiting room: "
            "once its capacity is full, new visitors wait in line.</p>"
            '<p><a href="/shop/">Go to the shop</a> (served by this origin, queue "shop") · '
            '<a href="/tickets/">Tickets</a> (static pages served by nginx, queue "tickets")</p>'
        )
        return 200, PAGE.format(title="Welcome", head="", body=body)
    if path.startswith("/shop/"):
        items = "".join(
            f'<div class="item">Limited drop #{n} — <a href="/shop/item/{n}">view</a></div>'
            for n in range(1, 4)
        )
        body = (
            f"<p>You are in. Requested: <code>{html.escape(path)}</code></p>{items}"
            # ?queue=: leave the shop only (without it every queue's place ends)
            '<form method="post" action="/_anteroom/leave?queue=shop&amp;return_to=/">'
            "<button>Done shopping (frees your place in the shop)</button></form>"
        )
        head = (
            '<script src="/_anteroom/waiting/default/keepalive.js" defer '
            'data-interval="20"></script>'
        )
        return 200, PAGE.format(title="Shop", head=head, body=body)
    # the test suite's queued locations, and the pages and API of its operator site
    if path.startswith(("/q/", "/cached/", "/seats/", "/bundle/", "/api/items")):
        body = f"<p>Page <code>{html.escape(path)}</code>.</p>"
        return 200, PAGE.format(title="Page", head="", body=body)
    # like any site: no page, an ordinary 404 (nothing of the admin listener is here)
    return 404, PAGE.format(title="Not found", head="", body="<p>No such page.</p>")


# -- the static /tickets/ pages nginx serves itself (index + try_files) ---------

TICKETS_PAGES = {
    "index.html": PAGE.format(
        title="Tickets",
        head='<script src="/_anteroom/waiting/default/keepalive.js" defer data-interval="20">'
        "</script>",
        body="<p>You are in. These pages are static files served by nginx itself from a "
        "folder, with <code>index</code> and <code>try_files</code>.</p>"
        '<div class="item">Friday night — <a href="/tickets/friday/">seats</a></div>'
        '<div class="item">Saturday matinee — <a href="/tickets/saturday.html">seats</a></div>'
        '<form method="post" action="/_anteroom/leave?queue=tickets&amp;return_to=/">'
        "<button>Done (frees your place for tickets)</button></form>",
    ),
    "friday/index.html": PAGE.format(
        title="Friday night", head="", body='<p>Rows A to F. <a href="/tickets/">Back</a></p>'
    ),
    "saturday.html": PAGE.format(
        title="Saturday matinee", head="", body='<p>Rows A to K. <a href="/tickets/">Back</a></p>'
    ),
}


def run_origin(port: int, host: str = "127.0.0.1") -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        status, text = origin_page(request.path)
        return web.Response(status=status, text=text, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host=host, port=port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.origin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    run_origin(args.port, args.host)


if __name__ == "__main__":
    main()
