"""No password on disk: --dump-streams blanks authentication message bodies.

A PostgreSQL server with three roles authenticating by cleartext password, md5 and
SCRAM-SHA-256 (pg_hba.conf lines for them, reloaded), an agent with --dump-streams: each
role runs a query; then no dump file contains any of the passwords (nor, for SCRAM, the
client's proof), while the startup packet (user, database) and the query text are kept
byte for byte, and each client stream's length is what the client sent (the 'p' headers
kept, their bodies zeros). Files are 0600. The agent's log and
/metrics never carry a password either.
"""

import psycopg2

import pg_harness as pgh

ROLES = {"plainuser": ("password", "Plain-Pw-7f3a"),
         "md5user": ("md5", "Md5-Pw-91bc"),
         "scramuser": ("scram-sha-256", "Scram-Pw-4d2e")}


def test_passwords_never_in_dumps(start_agent, tmp_path):
    with pgh.pg_server(name="auth") as pg:
        for role, (method, pw) in ROLES.items():
            enc = "md5" if method == "md5" else "scram-sha-256"
            pg.psql([f"SET password_encryption = '{enc}'",
                     f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'"])
        hba = pg.data_dir / "pg_hba.conf"
        hba.write_text("".join(f"host all {role} 127.0.0.1/32 {method}\n"
                               for role, (method, _) in ROLES.items()) + hba.read_text())
        pg.psql("SELECT pg_reload_conf()")
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
