"""No password on disk: --dump-streams blanks authentication message bodies.

A PostgreSQL server with three roles authenticating by cleartext password, md5 and
SCRAM-SHA-256 (pg_hba.conf lines for them, reloaded), an agent with --dump-streams: each
role runs a query; then no dump file contains any of the passwords (nor, for SCRAM, the
client's proof), while the startup packet (user, database) and the query text are kept
byte for byte, and each client stream's length is what the client sent (the 'p' headers
kept, their bodies zeros). Files are 0600. The agent's log and
/metrics never carry a password either.

Then, mirrored: no password, statement literal or parameter value in anything the agent
shows (test_no_secret_outside_dumps).
"""

import psycopg
import psycopg2

import pg_harness as pgh
import test_mirror as tm
import test_readiness as tr
from test_mirror import (  # noqa: F401 - pytest fixtures are used by name
    mirror_agent, mirror_agent_bin, pair)

ROLES = {"plainuser": ("password", "Plain-Pw-7f3a"),
         "md5user": ("md5", "Md5-Pw-91bc"),
         "scramuser": ("scram-sha-256", "Scram-Pw-4d2e")}


def test_passwords_never_in_dumps(start_agent, tmp_path):
    with pgh.pg_server(name="auth") as pg:
        pgh.add_password_roles(pg, ROLES, lambda role, method:
                               f"host all {role} 127.0.0.1/32 {method}\n")
        agent = start_agent(pg.port, ["lo"], dump=True)
        for role, (_, pw) in ROLES.items():
            conn = psycopg2.connect(host="127.0.0.1", port=pg.port, dbname="postgres",
                                    user=role, password=pw)
            conn.cursor().execute("SELECT 'kept-in-dump'")
            conn.close()
        metrics = pgh.scrape(agent.metrics_addr)[0]
        result = agent.stop()
        dump = agent.dump_dir
        files = sorted(dump.iterdir())
        c2s = [f for f in files if f.name.endswith(".c2s")]
        assert len(c2s) >= len(ROLES), files
        everything = b"".join(f.read_bytes() for f in files)
        for role, (_, pw) in ROLES.items():
            assert pw.encode() not in everything, f"{role}'s password is in a dump"
            assert role.encode() in everything, f"{role}'s startup packet was not kept"
            assert pw not in result.stderr and pw not in metrics
        assert b"kept-in-dump" in everything
        for f in files:
            assert f.stat().st_mode & 0o777 == 0o600, f
        # each password-carrying stream: the 'p' message is there, its body zeros
        plain = [f.read_bytes() for f in c2s if b"plainuser" in f.read_bytes()]
        assert plain, "no dump of the cleartext-password session"
        data = plain[0]
        at = data.index(b"p\x00\x00\x00")
        n = int.from_bytes(data[at + 1:at + 5], "big") - 4
        assert n == len(ROLES["plainuser"][1]) + 1 and data[at + 5:at + 5 + n] == bytes(n), \
            data[at:at + 5 + n]


# --------------------------------------------------------------------------- 2. literals

LITERAL = "planted-literal-5e1f"  # in a statement's text (simple Query)
PARAM = "planted-param-77c0"      # a parameter value (extended protocol)


def test_no_secret_outside_dumps(pair, mirror_agent):
    """Sessions of the three roles (cleartext, md5, SCRAM) on a mirrored source run a
    statement with a planted literal (a simple Query, psycopg2) and one with a planted
    parameter value (extended protocol, psycopg 3 prepared), some of them failing on the
    mirror only so that mismatches are logged (--log-mismatches). Then none of the
    passwords, the literal or the parameter value appears in the agent's log, /metrics,
    /readiness (text and JSON), /queries, the landing page or any console answer;
    normalized statement text ($n for every constant) is what they show."""
    src, mir = pair
    for pg in (src, mir):
        pg.psql("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    mir.psql("ALTER TABLE notes ADD CHECK (body NOT LIKE 'planted-literal%')")
    pgh.add_password_roles(src, ROLES, lambda role, method:
                           f"host all {role} 127.0.0.1/32 {method}\n",
                           grants=["GRANT ALL ON notes TO {role}"])
    agent = mirror_agent(src, mir, extra=["--log-mismatches", 100])
    for i, (role, (_, pw)) in enumerate(ROLES.items()):
        conn = psycopg2.connect(host="127.0.0.1", port=src.port, dbname="postgres", user=role,
                                password=pw)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("INSERT INTO notes VALUES (%s, %s)", (i, f"{LITERAL}-{i}"))
        cur.execute("SELECT count(*) FROM notes WHERE body = %s", (LITERAL,))
        conn.close()
        with psycopg.connect(host="127.0.0.1", port=src.port, dbname="postgres", user=role,
                             password=pw, autocommit=True) as c3:
            for _ in range(3):
                c3.execute("SELECT count(*) FROM notes WHERE body <> %s", (PARAM,),
                           prepare=True).fetchall()
    m = tm.wait_settled(agent)
    assert m.get("mirror_errors_query") >= 3, "the planted inserts did not fail on the mirror"
    answers = [pgh.scrape(agent.metrics_addr, path)[0] for path in
               ("/metrics", "/readiness", "/readiness?format=json", "/queries?limit=1000",
                "/")]
    for sql in ("SHOW MIRROR QUERIES", "SHOW MIRROR STATS", "SHOW MIRRORS",
                "SHOW MIRROR SESSIONS", "SHOW MIRROR POOLS", "SHOW MIRROR READINESS",
                "SHOW MIRROR DATABASES"):
        answers.append(repr(tr.console_table(agent, sql)))
    _, result = tm.finish(agent)
    answers.append(result.stderr)
    assert "mismatch 1/100" in result.stderr, "no mismatch was logged: the log was not tested"
    assert "body <> $1" in answers[3], "/queries shows no normalized statement"
    for text in answers:
        for secret in [LITERAL, PARAM] + [pw for _, pw in ROLES.values()]:
            assert secret not in text, f"{secret!r} appears in {text[:300]!r}"
