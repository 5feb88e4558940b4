"""Schemathesis hooks for scripts/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

Tern calls the URLs it is given: webhook and notification URLs (the delivery worker),
proxy upstreams and callbacks (the ingress itself for synchronous proxied calls, the
worker for async ones) and route targets. Generated data would name arbitrary hosts,
so every generated string that the service would read as an http(s) URL is pointed
at the local sink (`ternctl listen`, TERN_FUZZ_SINK). Nothing
leaves the machine, and the calls Tern makes still happen end to end.

Values are tamed where they are generated (so reports show what was sent) and, as the
guarantee, once more on the wire: schemathesis sends some requests (replays, control
probes) past its hooks, so every prepared request is checked at `requests`' send.
"""

import json
import os
import urllib.parse

import requests
import schemathesis

SINK = os.environ["TERN_FUZZ_SINK"]

# What WHATWG URL parsing (Rust's `url` crate) ignores: tabs and newlines anywhere,
# C0 controls and spaces around.
_IGNORED = str.maketrans("", "", "\t\n\r")


def _is_url(value: str) -> bool:
    text = value.translate(_IGNORED).strip("".join(chr(c) for c in range(0x21))).lower()
    return text.startswith("http:") or text.startswith("https:")


def _tame(value):
    if isinstance(value, str):
        return SINK if _is_url(value) else value
    if isinstance(value, bytes):
        try:
            return SINK.encode() if _is_url(value.decode("utf-8")) else value
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {key: _tame(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tame(item) for item in value]
    return value


def _tame_prepared(request: requests.PreparedRequest) -> None:
    for name, value in list(request.headers.items()):
        request.headers[name] = _tame(value)
    parts = urllib.parse.urlsplit(request.url)
    if parts.query:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        tamed = [(key, _tame(value)) for key, value in pairs]
        if tamed != pairs:
            request.url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(tamed)))
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not body:
        return
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        new = _tame(body)
    else:
        tamed_document = _tame(document)
        new = json.dumps(tamed_document).encode() if tamed_document != document else body
    if new is not body:
        request.body = new
        request.headers["Content-Length"] = str(len(new))


_send = requests.Session.send


def _send_tamed(self, request, **kwargs):
    _tame_prepared(request)
    return _send(self, request, **kwargs)


requests.Session.send = _send_tamed


@schemathesis.hook
def map_headers(context, headers):
    return _tame(headers)


@schemathesis.hook
def map_query(context, query):
    return _tame(query)


@schemathesis.hook
def map_body(context, body):
    return _tame(body)


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.headers:
        case.headers = _tame(case.headers)
    if case.query:
        case.query = _tame(case.query)
    if case.body is not None:
        case.body = _tame(case.body)
