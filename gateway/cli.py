"""`gateway serve | migrate | keys | token | sessions | export`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway import __version__, sqlite_owner
from gateway.errors import ConfigError, DatabaseUnavailable, GatewayError, SchemaOutOfDate
from gateway.redact import Redactor, secrets_from
from gateway.settings import CONFIG_FILE, Settings, config_path, load_settings


def _settings(args: argparse.Namespace, *, quiet: bool = False) -> Settings:
    path, how = config_path(getattr(args, "config", None), os.environ)
    if how == "found in the working directory" and not quiet:
        print(f"gateway: using ./{CONFIG_FILE} from the working directory", file=sys.stderr)
    return load_settings(path, database_url=getattr(args, "database_url", None))


def _config_label(args: argparse.Namespace, settings: Settings) -> str:
    _path, how = config_path(getattr(args, "config", None), os.environ)
    if how in ("embedded default", "--config"):
        return settings.source
    return f"{settings.source} ({how})"


def _redactor(settings: Settings) -> Redactor:
    return Redactor(secrets_from(settings, os.environ))


def _refuse_missing_sqlite(settings: Settings) -> None:
    """Reading commands never create a database: a missing file is a wrong directory or URL."""
    from gateway.store.db import is_sqlite, sqlite_path

    url = settings.server.database_url
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is not None and not path.exists():
        raise GatewayError(
            f"no database at {path} (database_url): run this where the gateway runs, or name its "
            "configuration with --config or its database with --database-url"
        )


async def _with_runtime(
    settings: Settings, work: Callable[[Any], Awaitable[int]], *, migrate: bool = False
) -> int:
    from gateway.server import build_services
    from gateway.store.db import ensure_schema

    rt = build_services(settings)
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

    overrides: dict[str, Any] = {"host": args.host, "port": args.port}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if args.migrate:
        overrides["auto_migrate"] = True
    path, _how = config_path(getattr(args, "config", None), os.environ)
    settings = load_settings(path, **overrides)
    redactor = _redactor(settings)
    logs.configure(
        settings.server.log_level,
        settings.server.log_json,
        redactor=redactor,
        access_log=settings.server.access_log,
    )
    # Clear messages before uvicorn starts, not a traceback: the SQLite file's owner
    # (sqlite_owner.py; the lifespan takes the same lock again), then the schema.
    with sqlite_owner.owning(settings.server.database_url):
        asyncio.run(_check_schema(settings))
        return _serve(args, settings, redactor)


def _serve(args: argparse.Namespace, settings: Settings, redactor: Redactor) -> int:
    from gateway.checks import check_settings
    from gateway.server import server_for

    server = server_for(settings)
    print(
        f"Switchboard gateway {__version__} on http://{settings.server.host}:{server.config.port} "
        f"(config: {_config_label(args, settings)}, database: {redactor.url(settings.server.database_url)})",
        file=sys.stderr,
    )
    checks = logging.getLogger("gateway.checks")
    for finding in check_settings(settings, os.environ):
        checks.warning(f"{finding.key}: {finding.message}")
    server.run()
    return 0 if server.started else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.store.db import upgrade

    settings = _settings(args)
    asyncio.run(upgrade(settings.server.database_url, args.revision))
    print(f"database at {args.revision}: {_redactor(settings).url(settings.server.database_url)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Every start-up check, plus the database: can it be reached, is its schema current."""
    from gateway.checks import Finding, check_settings
    from gateway.store.db import (
        create_engine,
        current_revision,
        head_revision,
        is_sqlite,
        reachable,
        sqlite_path,
    )

    settings = _settings(args)
    url = settings.server.database_url
    findings = check_settings(settings, os.environ)
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is not None and not path.exists():
        if not path.parent.is_dir():
            findings.append(
                Finding("error", "server.database_url", f"the directory {path.parent} does not exist")
            )
        # Else the first start creates and migrates it; checking must not create it.
    else:

        async def schema() -> str | None:
            engine = create_engine(url)
            try:
                return await reachable(url, lambda: current_revision(engine))
            finally:
                await engine.dispose()

        try:
            current, head = asyncio.run(schema()), head_revision()
            if current is not None and current != head and not settings.server.auto_migrate:
                findings.append(
                    Finding(
                        "error",
                        "server.database_url",
                        f"the schema is at revision {current}, this gateway needs {head}: "
                        "run `gateway migrate`",
                    )
                )
        except GatewayError as exc:
            findings.append(Finding("error", "server.database_url", exc.message))
    for finding in findings:
        print(finding.line())
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    print(
        f"{_config_label(args, settings)}: {errors} error{'s' * (errors != 1)}, "
        f"{warnings} warning{'s' * (warnings != 1)}",
        file=sys.stderr,
    )
    return 1 if errors else 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the running gateway answers /readyz (the container's health check)."""
    import urllib.error
    import urllib.request

    if args.url:
        url = args.url
    else:
        settings = _settings(args, quiet=True)
        host = settings.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        url = f"http://{host}:{settings.server.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            print(f"{url}: {r.status}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
    return 1


def cmd_keys(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(rt: Any) -> int:
        if args.action == "create":
            agents = [a.strip() for a in args.agents.split(",") if a.strip()] if args.agents else None
            key, record = await rt.auth.create_key(
                args.name, args.tenant, agents=agents, read_only=args.read_only, admin=args.admin
            )
            print(key)
            print(
                f"created {record.id} ({record.name}, {_scope_text(record)}); "
                "the key is shown once: store it now",
                file=sys.stderr,
            )
        elif args.action == "list":
            for k in await rt.store.api_keys():
                if args.tenant is not None and k.tenant != args.tenant:
                    continue
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.id}\t{k.prefix}…\t{k.name}\t{_scope_text(k)}\t{state}")
        else:
            if not await rt.store.revoke_api_key(args.key):
                print(f"no active key {args.key!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key}")
        return 0

    return asyncio.run(_with_runtime(settings, work))


def _scope_text(k: Any) -> str:
    if k.admin:
        scope = "admin"
    else:
        scope = f"tenant {k.tenant}" if k.tenant else "operator"
        if k.agents is not None:
            scope += " agents " + ",".join(k.agents)
    return scope + (" read-only" if k.read_only else "")


async def _tenant_agents(rt: Any, tenant: str | None) -> frozenset[str] | None:
    """`--tenant T`: the agents of tenant T, from gateway.toml and those processes declared
    (an unknown tenant has none); None: every agent."""
    if tenant is None:
        return None
    stored = {
        a
        for a, (_origin, cfg, _paused) in (await rt.store.agent_rows()).items()
        if cfg.get("tenant") == tenant
    }
    return frozenset(stored | {a for a in rt.directory.ids() if rt.directory.get(a).tenant == tenant})


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
    _refuse_missing_sqlite(settings)

    async def work(rt: Any) -> int:
        rows = await rt.store.sessions(
            SessionQuery(
                agent=args.agent,
                agents=await _tenant_agents(rt, args.tenant),
                status=args.status,
                limit=args.limit,
            )
        )
        for s in rows:
            contact = s.contact.address if s.contact else "-"
            print(f"{s.id}\t{s.agent_id}\t{s.channel}\t{contact}\t{s.status}")
        return 0

    return asyncio.run(_with_runtime(settings, work))


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.api.sessions import message_json, session_json
    from gateway.store.sql import SessionQuery

    settings = _settings(args)
    _refuse_missing_sqlite(settings)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")

    async def work(rt: Any) -> int:
        count, cursor = 0, None
        scope = await _tenant_agents(rt, args.tenant)
        total = await rt.store.count_sessions(agent=args.agent)
        try:
            while True:
                rows = await rt.store.sessions(
                    SessionQuery(agent=args.agent, agents=scope, limit=200, cursor=cursor)
                )
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
        print(f"\rexported {count} session{'s' * (count != 1)}", file=sys.stderr)
        return 0

    return asyncio.run(_with_runtime(settings, work))


def _progress(done: int, total: int, width: int = 30) -> None:
    """A progress bar on stderr (the JSONL goes to the file)."""
    filled = width if total <= 0 else min(width, done * width // total)
    bar = "#" * filled + "-" * (width - filled)
    print(f"\r[{bar}] {done}/{total} sessions", end="", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    # --config and --database-url are accepted before or after the command
    # (`gateway --config x.toml serve` and `gateway serve --config x.toml`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"gateway.toml to read (default: $GATEWAY_CONFIG, else ./{CONFIG_FILE} when present, "
        "else the embedded default: SQLite, echo agent `demo`)",
    )
    common.add_argument(
        "--database-url",
        dest="database_url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="database to use, overriding GATEWAY_DATABASE_URL and the file "
        "(postgresql://user:password@host:5432/name or sqlite:///gateway.db; default: "
        "sqlite:///gateway.db in the working directory)",
    )
    p = argparse.ArgumentParser(
        prog="gateway",
        description="Switchboard: a messaging gateway for AI agents. Run `gateway COMMAND --help` "
        "for a command's options.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_ + ".", parents=[common])

    s = command("serve", "run the gateway (HTTP, WebSockets, the demo page and the console)")
    s.add_argument("--host", help="address to listen on (default: [server] host, else 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to listen on (default: [server] port, else 8080)")
    s.add_argument(
        "--migrate",
        action="store_true",
        help="upgrade an existing database's schema first (a new, empty database is always set up)",
    )
    s.set_defaults(func=cmd_serve)

    m = command("migrate", "upgrade the database schema")
    m.add_argument("revision", nargs="?", default="head", help="revision to go to (default: head)")
    m.set_defaults(func=cmd_migrate)

    c = command("check", "check the configuration and the database; exit 1 when something cannot work")
    c.set_defaults(func=cmd_check)

    h = command("health", "ask a running gateway whether it is ready; exit 0 when it is")
    h.add_argument("--url", help="readiness URL (default: http://HOST:PORT/readyz from the configuration)")
    h.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default: 5)")
    h.set_defaults(func=cmd_health)

    k = command("keys", "manage API keys")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create a key and print it once", parents=[common])
    kc.add_argument("name", help="a name to recognise the key by")
    kc.add_argument(
        "--tenant", help="the key sees only this tenant's agents (default: none, an operator key)"
    )
    kc.add_argument("--agents", help="narrow the key to these agent ids (comma-separated)")
    kc.add_argument("--read-only", dest="read_only", action="store_true", help="no writes (dashboards)")
    kc.add_argument("--admin", action="store_true", help="sees every tenant and manages keys")
    kl = ksub.add_parser("list", help="list keys (never the keys themselves)", parents=[common])
    kl.add_argument("--tenant", help="only this tenant's keys")
    kr = ksub.add_parser("revoke", help="revoke a key", parents=[common])
    kr.add_argument("key", help="key id (key_…) or prefix (sk_…)")
    k.set_defaults(func=cmd_keys)

    t = command("token", "mint a single-use browser token")
    t.add_argument("agent", help="agent id")
    t.add_argument(
        "--channel", choices=["chat", "stream"], default="chat", help="chat or stream (default: chat)"
    )
    t.add_argument("--session", help="continue this session id (default: a new one)")
    t.set_defaults(func=cmd_token)

    ss = command("sessions", "list recent sessions")
    ss.add_argument("--agent", help="only this agent's (default: all)")
    ss.add_argument("--status", choices=["active", "ended"], help="only active or ended (default: both)")
    ss.add_argument("--limit", type=int, default=50, help="how many, newest first (default: 50)")
    ss.add_argument("--tenant", help="only sessions of this tenant's agents")
    ss.set_defaults(func=cmd_sessions)

    e = command("export", "write every session with its messages as JSON lines")
    e.add_argument("--agent", help="only this agent's (default: all)")
    e.add_argument("-o", "--output", default="-", help="file to write (default: -, standard output)")
    e.add_argument("--tenant", help="only sessions of this tenant's agents")
    e.set_defaults(func=cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (SchemaOutOfDate, DatabaseUnavailable, sqlite_owner.AlreadyServed) as exc:
        print(f"gateway: {Redactor()(exc.message)}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
