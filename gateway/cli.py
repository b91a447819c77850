"""The `gateway` console script: serve, check, models build."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from gateway.config.loader import ConfigError, load_config

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Inference gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a config over HTTP (and gRPC)")
    serve.add_argument(
        "--config", help="config file (default: $GATEWAY_CONFIG, else config/gateway.yaml)"
    )
    serve.add_argument("--host", help="address to bind (default: server.host)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default: server.http_port)")
    serve.add_argument(
        "--grpc-port", type=int, help="gRPC port, 0 disables (default: server.grpc_port)"
    )
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

    check = commands.add_parser("check", help="validate a config without serving")
    check.add_argument("file")

    models = commands.add_parser("models", help="model artifacts")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    build = model_commands.add_parser(
        "build", help="rebuild models/ artifacts (needs the train extra)"
    )
    build.add_argument("name", nargs="?", help="one model (default: all)")
    build.add_argument(
        "--models-dir", default=None, help="default: ./models, else beside the package"
    )
    promote = model_commands.add_parser(
        "promote",
        help="serve a new version after the promotion gate (on a running gateway)",
        description="Ask a running gateway's admin API to promote VERSION of NAME: "
        "signature check, offline evaluation, then a canary; waits for the verdict.",
    )
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument(
        "--config", help="the gateway's config, for its port and admin key variable"
    )
    promote.add_argument("--url", help="the gateway's HTTP address (default: from --config)")
    promote.add_argument(
        "--admin-key-env", help="variable holding the admin key (default: from --config)"
    )
    promote.add_argument("--no-wait", action="store_true", help="return once the canary starts")
    promote.add_argument("--abort", action="store_true", help="abort NAME's running canary")
    promote.add_argument(
        "--timeout", type=float, default=7200.0, help="give up waiting after this long (s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gateway.observe.logs import setup_logging

    setup_logging("info")
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args.file)
    if args.models_command == "promote":
        from gateway.promotion.client import promote_command

        return promote_command(args)
    return _build_models(args.name, args.models_dir)


def _serve(args: argparse.Namespace) -> int:
    from gateway.api.admin import warn_if_admin_open
    from gateway.app import default_config_path
    from gateway.observe import tracing
    from gateway.observe.logs import setup_logging
    from gateway.server import serve

    path = Path(args.config) if args.config else default_config_path()
    try:
        loaded = load_config(path)
        server = loaded.config.server
        setup_logging(server.log_level, server.log_format)
        tracing.setup()  # as the OTEL_* variables say; off by default
        host = args.host or server.host
        warn_if_admin_open(server, host)
        serve(
            loaded,
            host=host,
            http_port=server.http_port if args.http_port is None else args.http_port,
            grpc_port=server.grpc_port if args.grpc_port is None else args.grpc_port,
            workers=max(1, args.workers),
        )
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _check(file: str) -> int:
    from gateway.app import check_config

    loaded, problems = check_config(file)
    if problems:
        print(f"{file}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    assert loaded is not None
    config = loaded.config
    print(
        f"{file}: ok ({len(config.models)} model(s), {len(config.backends)} backend(s), "
        f"sha256 {loaded.sha256[:12]})"
    )
    return 0


def _models_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    local = Path("models")
    return local if local.is_dir() else Path(__file__).resolve().parent.parent / "models"


def _build_models(name: str | None, models_dir: str | None) -> int:
    root = _models_dir(models_dir)
    scripts = sorted(root.glob("*/build.py"))
    if name is not None:
        scripts = [s for s in scripts if s.parent.name == name]
        if not scripts:
            known = sorted(s.parent.name for s in root.glob("*/build.py"))
            print(
                f"no build script for model '{name}' under {root} (known: {known})", file=sys.stderr
            )
            return 1
    for script in scripts:
        log.info("building %s with %s", script.parent.name, script)
        # A subprocess keeps the training stack out of this process and lets
        # each script own its arguments.
        result = subprocess.run([sys.executable, str(script)], check=False)
        if result.returncode != 0:
            print(
                f"building '{script.parent.name}' failed (exit {result.returncode})",
                file=sys.stderr,
            )
            return result.returncode
    return 0
