"""`gateway serve | migrate | keys | token | sessions | export`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway import __version__
from gateway.errors import ConfigError, GatewayError, SchemaOutOfDate
from gateway.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, database_url=getattr(args, "database_url", None))


async def _with_runtime(
    settings: Settings, work: Callable[[Any], Awaitable[int]], *, migrate: bool = False
) -> int:
    from gateway.server import build_runtime
    from gateway.store.db import ensure_schema

    rt = build_runtime(settings)
    try:
        await ensure_schema(
            rt.store.engine, settings.server.database_url, migrate=migrate or settings.server.auto_migrate
        )
        return await work(rt)
    finally:
        await rt.store.close()


async def _check_schema(settings: Settings) -> None:
    from gateway.store.db import create_engine, ensure_schema

    engine = create_engine(settings.server.database_url)
    try:
        await ensure_schema(engine, settings.server.database_url, migrate=settings.server.auto_migrate)
    finally:
        await engine.dispose()


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.server import server_for

    overrides: dict[str, Any] = {"host": args.host, "port": args.port, "database_url": args.database_url}
    if args.migrate:
        overrides["auto_migrate"] = True
    settings = load_settings(args.config, **overrides)
    logs.configure(settings.server.log_level, settings.server.log_json)
    asyncio.run(_check_schema(settings))  # a clear message before uvicorn starts, not a traceback
    server = server_for(settings)
    print(
        f"Switchboard gateway {__version__} on http://{settings.server.host}:{server.config.port} "
        f"(config: {settings.source}, database: {settings.server.database_url})",
        file=sys.stderr,
    )
    server.run()
    return 0 if server.started else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.store.db import upgrade

    settings = _settings(args)
    asyncio.run(upgrade(settings.server.database_url, args.revision))
    print(f"database at {args.revision}: {settings.server.database_url}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(rt: Any) -> int:
        if args.action == "create":
            key, record = await rt.auth.create_key(args.name, args.tenant)
            print(key)
            print(
                f"created {record.id} ({record.name}); the key is shown once: store it now", file=sys.stderr
            )
        elif args.action == "list":
            for k in await rt.store.api_keys():
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.id}\t{k.prefix}…\t{k.name}\t{state}")
        else:
            if not await rt.store.revoke_api_key(args.key):
                print(f"no active key {args.key!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key}")
        return 0

    return asyncio.run(_with_runtime(settings, work))


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(rt: Any) -> int:
        rt.directory.get(args.agent)
        token = await rt.auth.mint(channel=args.channel, agent=args.agent, session_id=args.session)
        print(token)
        return 0

    return asyncio.run(_with_runtime(settings, work))


def cmd_sessions(args: argparse.Namespace) -> int:
    from gateway.store.sql import SessionQuery

    settings = _settings(args)

    async def work(rt: Any) -> int:
        rows = await rt.store.sessions(SessionQuery(agent=args.agent, status=args.status, limit=args.limit))
        for s in rows:
            contact = s.contact.address if s.contact else "-"
            print(f"{s.id}\t{s.agent_id}\t{s.channel}\t{contact}\t{s.status}")
        return 0

    return asyncio.run(_with_runtime(settings, work))


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.api.sessions import message_json, session_json
    from gateway.store.sql import SessionQuery

    settings = _settings(args)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")

    async def work(rt: Any) -> int:
        count, cursor = 0, None
        total = await rt.store.count_sessions(agent=args.agent)
        try:
            while True:
                rows = await rt.store.sessions(SessionQuery(agent=args.agent, limit=200, cursor=cursor))
                for s in rows:
                    record = session_json(s)
                    record["messages"] = [message_json(m) for m in await rt.store.messages(s.id)]
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    count += 1
                    if args.output != "-":
                        _progress(count, total)
                if len(rows) < 200:
                    break
                cursor = (rows[-1].started_at, rows[-1].id)
        finally:
            if out is not sys.stdout:
                out.close()
        print(f"\rexported {count} sessions", file=sys.stderr)
        return 0

    return asyncio.run(_with_runtime(settings, work))


def _progress(done: int, total: int, width: int = 30) -> None:
    """A progress bar on stderr (the JSONL goes to the file)."""
    filled = width if total <= 0 else min(width, done * width // total)
    bar = "#" * filled + "-" * (width - filled)
    print(f"\r[{bar}] {done}/{total} sessions", end="", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Switchboard: a messaging gateway for AI agents.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--config", help="path to gateway.toml (default: $GATEWAY_CONFIG, else the embedded default)"
    )
    p.add_argument("--database-url", dest="database_url", help="overrides GATEWAY_DATABASE_URL")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--migrate", action="store_true", help="upgrade the database schema first")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("migrate", help="upgrade the database schema")
    m.add_argument("revision", nargs="?", default="head")
    m.set_defaults(func=cmd_migrate)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create")
    kc.add_argument("name")
    kc.add_argument("--tenant")
    ksub.add_parser("list")
    kr = ksub.add_parser("revoke")
    kr.add_argument("key", help="key id (key_…) or prefix (sk_…)")
    k.set_defaults(func=cmd_keys)

    t = sub.add_parser("token", help="mint a browser token")
    t.add_argument("agent")
    t.add_argument("--channel", choices=["chat", "stream"], default="chat")
    t.add_argument("--session")
    t.set_defaults(func=cmd_token)

    ss = sub.add_parser("sessions", help="list recent sessions")
    ss.add_argument("--agent")
    ss.add_argument("--status", choices=["active", "ended"])
    ss.add_argument("--limit", type=int, default=50)
    ss.set_defaults(func=cmd_sessions)

    e = sub.add_parser("export", help="write every session with its messages as JSON lines")
    e.add_argument("--agent")
    e.add_argument("-o", "--output", default="-")
    e.set_defaults(func=cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except SchemaOutOfDate as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
