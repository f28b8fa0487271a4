"""Start-up as a new user meets it: database URLs, first start, config discovery, checks.

Messages are compared word for word: they are the interface a person reads.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.checks import check_settings
from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings, normalize_database_url
from tests.conftest import free_port, reset_postgres
from tests.services import PG_URL, need_postgres

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = [sys.executable, "-m", "gateway.cli"]


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def gateway(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEWAY, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=user_env(**env)
    )


# -- database URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:p@db:5432/gw", "postgresql+asyncpg://u:p@db:5432/gw"),
        ("postgresql://u:p@db/gw", "postgresql+asyncpg://u:p@db/gw"),
        ("postgresql+asyncpg://u@db/gw", "postgresql+asyncpg://u@db/gw"),
        ("postgresql://u:p@db/gw?sslmode=require", "postgresql+asyncpg://u:p@db/gw?ssl=require"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////var/lib/gw.db", "sqlite+aiosqlite:////var/lib/gw.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_common_database_urls_map_to_the_async_drivers(given: str, used: str) -> None:
    assert normalize_database_url(given) == used
    assert load_settings(None, env={"GATEWAY_DATABASE_URL": given}).server.database_url == used


def test_log_switches_come_from_the_environment_too() -> None:
    s = load_settings(None, env={"GATEWAY_ACCESS_LOG": "true", "GATEWAY_LOG_JSON": "0"})
    assert s.server.access_log is True and s.server.log_json is False
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"GATEWAY_ACCESS_LOG": "sometimes"})
    assert "server.access_log: Input should be a valid boolean" in err.value.message


def test_an_unsupported_database_url_names_the_key_and_hides_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"GATEWAY_DATABASE_URL": "mysql://root:hunter2hunter2@db/gw"})
    assert err.value.message == (
        "<embedded default>: invalid configuration\n"
        "  server.database_url: Value error, unsupported database 'mysql'; expected "
        "postgresql://user:password@host:5432/name or sqlite:///path/to/gateway.db "
        "(got 'mysql://root:***@db/gw')"
    )


def test_a_postgres_url_from_a_hosting_provider_serves(tmp_path: Path) -> None:
    """`postgresql://` as providers print it: the gateway migrates and answers through asyncpg."""
    need_postgres()
    import asyncio

    asyncio.run(reset_postgres())
    plain = PG_URL.replace("postgresql+asyncpg://", "postgres://", 1)
    r = gateway("migrate", "--database-url", plain, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"database at head: {PG_URL}\n"


def test_a_missing_postgres_database_is_one_line(tmp_path: Path) -> None:
    need_postgres()
    url = "postgres://postgres:S3cretPassw0rd@127.0.0.1:5432/switchboard_no_such_db"
    r = gateway("serve", cwd=tmp_path, GATEWAY_DATABASE_URL=url)
    assert r.returncode == 2
    assert r.stderr == (
        'gateway: database_url: PostgreSQL at 127.0.0.1:5432 has no database "switchboard_no_such_db": '
        "create it (createdb -h 127.0.0.1 -p 5432 -U postgres switchboard_no_such_db) "
        "or correct the name in database_url\n"
    )


def test_a_database_nobody_listens_for_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    r = gateway(
        "migrate", "--database-url", f"postgresql://gw:S3cretPassw0rd@127.0.0.1:{port}/gw", cwd=tmp_path
    )
    assert r.returncode == 2
    assert r.stderr == (
        f"gateway: database_url: cannot connect to PostgreSQL at 127.0.0.1:{port} (connection refused): "
        "start the database or correct the host and port in database_url\n"
    )
    assert r.stdout == ""


def test_an_unknown_database_host_is_one_line(tmp_path: Path) -> None:
    r = gateway("migrate", "--database-url", "postgresql://gw@db.invalid/gw", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == (
        "gateway: database_url: cannot connect to PostgreSQL at db.invalid:5432 (unknown host): "
        "start the database or correct the host and port in database_url\n"
    )


def test_a_sqlite_file_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    r = gateway("serve", "--database-url", f"sqlite:///{tmp_path}/nowhere/gw.db", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == (
        f"gateway: database_url: cannot open the SQLite file {tmp_path}/nowhere/gw.db "
        f"(the directory {tmp_path}/nowhere does not exist): create the directory or correct the "
        "path in database_url\n"
    )


# -- first start, config discovery -----------------------------------------------------------


def write_support_config(where: Path, **server: str) -> Path:
    path = where / "gateway.toml"
    lines = ["[server]", *(f'{k} = "{v}"' for k, v in server.items())]
    lines += ["", "[agents.support]", 'answer = "echo"', 'allowed_origins = ["http://127.0.0.1:*"]']
    path.write_text("\n".join(lines) + "\n")
    return path


def schema_revision(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("select version_num from alembic_version").fetchone()[0])


def test_a_config_file_on_a_new_database_creates_and_migrates_it(tmp_path: Path) -> None:
    """The first start with a gateway.toml (auto_migrate off) sets up the new database."""
    config = write_support_config(tmp_path, database_url="sqlite:///fresh.db")
    # `check` reads, never creates.
    r = gateway("check", "--config", str(config), cwd=tmp_path, GATEWAY_ADMIN_KEY="sk_admin_check_1234")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "fresh.db").exists()
    # `--config` after the command, as the design contract writes it; a token needs the schema.
    r = gateway("token", "support", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tk_")
    assert schema_revision(tmp_path / "fresh.db")


def test_gateway_toml_in_the_working_directory_is_used_and_said(tmp_path: Path) -> None:
    write_support_config(tmp_path, database_url="sqlite:///here.db")
    r = gateway("token", "support", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "gateway: using ./gateway.toml from the working directory\n"
    assert (tmp_path / "here.db").exists() and not (tmp_path / "gateway.db").exists()
    # Reading commands never create a database somewhere else.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = gateway("sessions", cwd=elsewhere)
    assert r.returncode == 1
    assert r.stderr == (
        "gateway: no database at gateway.db (database_url): run this where the gateway runs, "
        "or name its configuration with --config or its database with --database-url\n"
    )
    assert list(elsewhere.iterdir()) == []


def test_config_before_or_after_the_command(tmp_path: Path) -> None:
    config = write_support_config(tmp_path, database_url=f"sqlite:///{tmp_path}/gw.db")
    before = gateway("--config", str(config), "migrate", cwd=tmp_path)
    after = gateway("migrate", "--config", str(config), cwd=tmp_path)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout == f"database at head: sqlite+aiosqlite:///{tmp_path}/gw.db\n"


def test_subcommand_help_explains_each_option_and_its_default(tmp_path: Path) -> None:
    r = gateway("sessions", "--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "how many, newest first (default: 50)" in r.stdout
    assert "--config PATH" in r.stdout and "./gateway.toml when present" in r.stdout
    r = gateway("serve", "--help", cwd=tmp_path)
    assert "port to listen on (default: [server] port, else 8080)" in r.stdout


# -- checks ------------------------------------------------------------------------------------


def test_checks_say_what_cannot_work_one_line_each() -> None:
    settings = Settings.from_dict(
        {
            "agents": {
                "support": {"answer": "llm", "llm": {"model": "m", "api_key_env": "SUPPORT_LLM_KEY"}},
                "sms": {
                    "answer": "echo",
                    "twilio": [{"number": "+15550001111"}],
                },
                "wa": {
                    "answer": "echo",
                    "whatsapp": [{"phone_number_id": "123456", "access_token_env": "WA_TOKEN"}],
                },
                "forgot": {"allowed_origins": ["https://example.com"]},
            }
        }
    )
    lines = [f.line() for f in check_settings(settings, {"WA_TOKEN": "x"})]
    assert lines == [
        "warning: server.admin_key: no admin key (set GATEWAY_ADMIN_KEY): the console cannot be signed "
        "into and the API accepts only keys made with `gateway keys create`",
        "warning: agents.support: no channel (allowed_origins, whatsapp or twilio): reachable only "
        "through the API with a key",
        "error: agents.support.llm.api_key_env: SUPPORT_LLM_KEY is not set",
        "error: agents.sms.twilio[0].account_sid_env: TWILIO_ACCOUNT_SID is not set: Twilio requests "
        "are refused",
        "error: agents.sms.twilio[0].auth_token_env: TWILIO_AUTH_TOKEN is not set: Twilio requests are "
        "refused",
        "error: agents.wa.whatsapp[0].app_secret_env: number 123456 has no app secret: its webhooks are "
        "refused",
        'warning: agents.forgot.answer: not set, so it answers with echo (set answer = "llm", '
        '"webhook" or "process")',
        "warning: server.public_url: not set while sms answer on Twilio: no status callbacks are "
        "requested and signatures are checked against the address the gateway sees (set the https "
        "address Twilio calls, or trust_proxy = true behind a proxy)",
    ]
    empty = check_settings(Settings.from_dict({"server": {"admin_key": "k" * 20}}), {})
    assert [f.line() for f in empty] == [
        "warning: agents: no agents configured: only agent processes (/v1/agents/ws) can add one"
    ]


def test_gateway_check_exits_non_zero_on_errors(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[agents.support]\nanswer = "llm"\nallowed_origins = ["http://127.0.0.1:*"]\n'
        '[agents.support.llm]\nmodel = "m"\napi_key_env = "SUPPORT_LLM_KEY"\n'
    )
    r = gateway("check", cwd=tmp_path, GATEWAY_ADMIN_KEY="sk_admin_check_1234")
    assert r.returncode == 1
    assert r.stdout == "error: agents.support.llm.api_key_env: SUPPORT_LLM_KEY is not set\n"
    assert r.stderr.endswith("gateway.toml (found in the working directory): 1 error, 0 warnings\n")
    r = gateway("check", cwd=tmp_path, GATEWAY_ADMIN_KEY="sk_admin_check_1234", SUPPORT_LLM_KEY="sk-x")
    assert r.returncode == 0 and r.stdout == ""


def test_serve_warns_at_start_in_one_line_each(tmp_path: Path) -> None:
    """`serve` logs each finding and goes on; here it then stops on the taken port."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = gateway("serve", "--port", str(port), cwd=tmp_path, timeout=60)
    warnings = [line for line in r.stderr.splitlines() if '"gateway.checks"' in line]
    assert len(warnings) == 1
    assert '"msg": "server.admin_key: no admin key (set GATEWAY_ADMIN_KEY)' in warnings[0]
