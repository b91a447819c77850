"""`gateway models promote NAME VERSION`: the admin API's client.

The running gateway does the work (it holds the serving version, the traffic
and the config); the command asks it to start, then follows the promotion
until its verdict. Progress goes to stderr, the final promotion document (JSON)
to stdout. Exit status: 0 promoted, 1 refused, rolled back, aborted or failed,
2 the request could not be made, 3 gave up waiting (the canary goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from gateway.config.loader import ConfigError, load_config

_POLL_S = 0.5  # how often the status is asked for while the canary runs


class ClientError(Exception):
    """The admin API could not be asked, or refused the request."""


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The gateway's base URL and the admin key to send."""
    url: str | None = args.url
    key_env: str | None = args.admin_key_env
    if url is None or (key_env is None and args.config is not None):
        from gateway.app import default_config_path

        path = args.config or default_config_path()
        try:
            server = load_config(path).config.server
        except ConfigError as exc:
            raise ClientError(exc.report()) from None
        if url is None:
            host = server.host if server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            url = f"http://{host}:{server.http_port}"
        key_env = key_env or server.admin_key_env
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    key = None
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise ClientError(f"the admin key variable {key_env} is not set")
    return url.rstrip("/"), key


def _call(method: str, url: str, key: str | None, body: Any = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if key is not None:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise ClientError(f"{method} {url}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"{method} {url}: {exc}") from None


def _progress(doc: dict[str, Any]) -> str:
    canary = doc.get("canary")
    if doc["state"] == "canary" and canary:
        return (
            f"canary {doc['canary_backend']}: {canary['requests']} request(s), "
            f"{canary['errors']} failed, {canary['slow']} slow, burn "
            f"{canary['availability_burn']}/{canary['latency_burn']}, disagreement "
            f"{canary['disagreement']} after {canary['elapsed_s']} s"
        )
    evaluation = doc.get("evaluation")
    scored = (
        f"; {evaluation['metric']} {evaluation['candidate']} vs {evaluation['serving']}"
        if evaluation
        else ""
    )
    reasons = f": {'; '.join(doc['reasons'])}" if doc.get("reasons") else ""
    return f"{doc['model']} version {doc['version']}: {doc['state']}{scored}{reasons}"


def promote_command(args: argparse.Namespace) -> int:
    try:
        base, key = _target(args)
        model = f"{base}/admin/models/{args.name}"
        if args.abort:
            doc = _call("POST", f"{model}/promotion/abort", key, {})
        else:
            doc = _call("POST", f"{model}/promote", key, {"version": args.version})
            deadline = time.monotonic() + args.timeout
            shown = ""
            while not doc["final"] and not args.no_wait:
                line = _progress(doc)
                if line != shown:
                    print(line, file=sys.stderr)
                    shown = line
                if time.monotonic() > deadline:
                    print("gave up waiting; the canary goes on", file=sys.stderr)
                    print(json.dumps(doc, indent=2))
                    return 3
                time.sleep(_POLL_S)
                doc = _call("GET", f"{model}/promotion", key)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_progress(doc), file=sys.stderr)
    print(json.dumps(doc, indent=2))
    if args.abort or not doc["final"]:
        return 0  # aborted as asked, or --no-wait: the canary started
    return 0 if doc["state"] == "promoted" else 1
