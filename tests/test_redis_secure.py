"""Redis with users and TLS, as deploy/redis-users.acl and the README set it up, end to end.

A real redis-server listening with TLS only (a CA and a server certificate made here with
openssl), its users loaded from deploy/redis-users.acl (the passwords' hashes filled in): the
proxy's user may read every cpmiw key and write only conversations and AS markers, the tool's
may write cpmiw keys but nothing else, no dangerous command. Kamailio routes with the proxy's
user through `rediss://` and the CA file; the `cpmiw` tool provisions with its own. No password
is ever printed by the tool or logged by the proxy.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from conftest import CPM_PAGER, REPO, Kamailio, _stop, start_kamailio
from cpmiw.ops.cli import main
from cpmiw.settings import redacted
from cpmiw.store.profiles import ProfileStore
from cpmiw.store.redis import StoreError, connect
from cpmiw.testing import free_port, wait_until
from cpmiw.testing.sipnet import Peer, StatelessProxy
from sipflows import cpm_message

DEVICE_PASSWORD = "a-device-Pa55"
PASSWORDS = {"proxy": "proxy-Pa55-7f3a9c", "tool": "tool-Pa55-61be04", "admin": "admin-Pa55-0c2d"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://cpmiw:s3cret@10.0.0.1:6379/0", "redis://cpmiw:***@10.0.0.1:6379/0"),
        ("rediss://:s3cret@h:1/0?ssl_ca_certs=/etc/ca.pem", "rediss://:***@h:1/0?ssl_ca_certs=/etc/ca.pem"),
        ("redis+sentinel://u:s3cret@a:1,b:2/svc?sentinel_password=s3cret&x=1",
         "redis+sentinel://u:***@a:1,b:2/svc?sentinel_password=***&x=1"),
        ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://u:s3/cr@t@h/0", "redis://u:***@h/0"),  # unescaped / and @ in the password
        ("redis://user@h/0", "redis://user@h/0"),  # a user without a password
    ],
)  # fmt: skip
def test_a_url_is_shown_without_its_passwords(url: str, shown: str) -> None:
    assert redacted(url) == shown


@dataclass
class SecureRedis:
    port: int
    ca: Path
    process: subprocess.Popen[bytes]

    def url(self, user: str, *, ca: bool = True) -> str:
        query = f"?ssl_ca_certs={self.ca}" if ca else ""
        return f"rediss://cpmiw-{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}/0{query}"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(user).replace("cpmiw-admin", "admin"))


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 (the name a client checks)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, request = directory / "redis.pem", directory / "redis.key", directory / "redis.csr"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
             "-subj", "/CN=cpmiw test CA")  # fmt: skip
    _openssl("req", *ec, "-keyout", str(key), "-out", str(request), "-subj", "/CN=127.0.0.1")
    names = directory / "san.cnf"
    names.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2",
             "-extfile", str(names))  # fmt: skip
    return ca, cert, key


def _users(directory: Path) -> Path:
    """deploy/redis-users.acl with the passwords' hashes, and an administrator for the test."""
    rules = (REPO / "deploy" / "redis-users.acl").read_text()
    for user in ("proxy", "tool"):
        digest = hashlib.sha256(PASSWORDS[user].encode()).hexdigest()
        rules = rules.replace(f"#{user.upper()}_PASSWORD_SHA256", f"#{digest}")
    path = directory / "users.acl"
    path.write_text(rules + f"user admin on >{PASSWORDS['admin']} ~* &* +@all\n")
    return path


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    directory = tmp_path_factory.mktemp("secure-redis")
    ca, cert, key = _certificates(directory)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--aclfile", str(_users(directory)), "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    server = SecureRedis(port, ca, process)
    admin = server.client("admin")

    def ready() -> bool:
        try:
            return bool(admin.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(ready, "redis-server with TLS")
        yield server
    finally:
        _stop(process)


def tool(server: SecureRedis, *args: str, stdin: str | None = None) -> Result:
    env = {"CPMIW_REDIS_URL": server.url("tool")}
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


PROFILES = "\n".join(
    [
        "identities,services,barred,interworking",
        "sip:alice@ims.example.net tel:+15559990001,cpm,false,rewrite",
        "sip:bob@ims.example.net tel:+15559990002,cpm,true,rewrite",
        "sip:carol@ims.example.net tel:+15559990003,sms,false,rewrite",
        "sip:dave@ims.example.net tel:+15559990004,im,false,im_as",
    ]
)


@pytest.fixture(scope="module")
def proxy(secure: SecureRedis, log_dir: Path) -> Iterator[tuple[Kamailio, Peer, Peer]]:
    with Peer("127.0.0.3") as im_as, Peer("127.0.0.4") as ip_sm_gw:
        kamailio = start_kamailio(
            {
                "CPMIW_REDIS_URL": secure.url("proxy"),
                "CPMIW_IM_AS": im_as.uri,
                "CPMIW_IP_SM_GW": ip_sm_gw.uri,
                "CPMIW_AS_TIMEOUT_MS": "500",
            },
            log_dir,
        )
        try:
            yield kamailio, im_as, ip_sm_gw
        finally:
            _stop(kamailio.process)


@pytest.fixture(scope="module")
def provisioned(secure: SecureRedis, tmp_path_factory: pytest.TempPathFactory) -> SecureRedis:
    """The subscribers, written by the tool with its user."""
    source = tmp_path_factory.mktemp("profiles") / "profiles.csv"
    source.write_text(PROFILES + "\n")
    done = tool(secure, "profile", "import", str(source))
    assert done.exit_code == 0, done.output
    for user in ("alice", "dave"):
        set_password = tool(
            secure, "credential", "set", f"sip:{user}@ims.example.net", stdin=f"{DEVICE_PASSWORD}\n"
        )
        assert set_password.exit_code == 0, set_password.output
    return secure


def test_the_tool_works_with_its_user_over_tls(provisioned: SecureRedis) -> None:
    secure = provisioned
    assert tool(secure, "store", "status").stdout.startswith("ready:")
    shown = tool(secure, "profile", "get", "tel:+15559990002")
    assert shown.exit_code == 0 and '"barred":true' in shown.stdout.replace(" ", "")
    assert tool(secure, "profile", "alias", "add", "sip:alice@ims.example.net",
                "sip:alice.work@ims.example.net").exit_code == 0  # fmt: skip
    assert tool(secure, "profile", "export").exit_code == 0
    assert tool(secure, "profile", "history", "sip:alice@ims.example.net").exit_code == 0
    assert tool(secure, "credential", "list").exit_code == 0


def test_the_proxy_routes_with_its_user_over_tls(
    provisioned: SecureRedis, proxy: tuple[Kamailio, Peer, Peer]
) -> None:
    secure = provisioned
    kamailio, im_as, ip_sm_gw = proxy
    with Peer() as caller:
        barred = caller.request("MESSAGE", "sip:bob@ims.example.net", headers=CPM_PAGER)
        assert caller.ask(barred, kamailio.address).status == 403  # read with EVALSHA_RO
    with Peer("127.0.0.5") as phone, Peer() as caller:
        # Digest: the credential read with the proxy's user.
        registered = phone.register(
            kamailio.address, "sip:alice@ims.example.net", password=DEVICE_PASSWORD
        )
        assert registered.status == 200
        # CPM to an SMS user: to the IP-SM-GW, the conversation kept (a write, HSET).
        to_sms = cpm_message(caller, "tel:+15559990003", from_="<sip:alice@ims.example.net>;tag=a")
        caller.send(to_sms, kamailio.address)
        ip_sm_gw.reply(ip_sm_gw.recv_request("MESSAGE"), 202, "Accepted")
        assert caller.recv_response().status == 202
        # The SMS user's reply gets the conversation back (read and moved on in one script).
        reply = ip_sm_gw.request(
            "MESSAGE", "sip:alice@ims.example.net", from_="<tel:+15559990003>;tag=gw",
            headers=[("Accept-Contact", "*;+g.oma.sip-im"), ("Content-Type", "text/plain")],
        )  # fmt: skip
        ip_sm_gw.send(reply, kamailio.address)
        delivered = phone.recv_request("MESSAGE")
        phone.reply(delivered, 200, "OK")
        assert ip_sm_gw.recv_response().status == 200
        assert delivered.header("Conversation-ID") == to_sms.header("Conversation-ID")
        assert delivered.header("InReplyTo-Contribution-ID") == to_sms.header("Contribution-ID")
    with Peer("127.0.0.5") as phone, Peer() as caller:
        registered = phone.register(
            kamailio.address, "sip:dave@ims.example.net", password=DEVICE_PASSWORD
        )
        assert registered.status == 200
        # To the IM AS and back: the marker recorded as honoured (SET NX on a marker key).
        as_proxy = StatelessProxy(im_as)
        caller.send(cpm_message(caller, "sip:dave@ims.example.net"), kamailio.address)
        as_proxy.forward_one()
        phone.reply(phone.recv_request("MESSAGE"), 200, "OK")
        assert [r.status for r in as_proxy.relay_responses()] == [200]
        assert caller.recv_response().status == 200
    # A change made by the tool reaches the proxy (the change watcher reads with the proxy's user).
    assert tool(secure, "profile", "set", "sip:bob@ims.example.net", "--not-barred").exit_code == 0
    with Peer() as caller:

        def unbarred() -> bool:
            request = caller.request("MESSAGE", "sip:bob@ims.example.net", headers=CPM_PAGER)
            return caller.ask(request, kamailio.address).status == 480  # no device

        wait_until(unbarred, "the change seen by the proxy", timeout=3)
    log = kamailio.log()
    assert "NOPERM" not in log and "no permissions" not in log
    assert "unavailable" not in log and "not kept" not in log and "not recalled" not in log
    assert not any(password in log for password in PASSWORDS.values())


def test_each_user_may_do_what_it_needs_and_no_more(secure: SecureRedis) -> None:
    proxy, tool_user = secure.client("proxy"), secure.client("tool")
    profile_key = "cpmiw:2:{000}:id:sip:mallory@ims.example.net"
    for forbidden in (
        lambda: proxy.set(profile_key, "{}"),  # the proxy never writes a profile
        lambda: proxy.delete("cpmiw:2:{changes}"),
        proxy.flushall,
        lambda: proxy.get("another application's key"),
        tool_user.flushall,  # the tool writes profiles, nothing dangerous
        lambda: tool_user.config_get("*"),
        lambda: tool_user.keys("*"),
        lambda: tool_user.set("another application's key", "1"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    assert proxy.set("cpmiw:2:marker:n0nce", "1", nx=True, ex=60)  # what it does write
    assert proxy.hset("cpmiw:1:conv:a|b", "conversation", "c") == 1


def test_tls_is_checked_against_the_ca(secure: SecureRedis) -> None:
    without_ca = ProfileStore(connect(secure.url("tool", ca=False), timeout=2.0))
    with pytest.raises(StoreError, match="certificate verify failed"):
        without_ca.lookup("sip:alice@ims.example.net")


@pytest.mark.parametrize("debug", [[], ["-d"]])
def test_the_tool_never_prints_a_password(secure: SecureRedis, debug: list[str]) -> None:
    wrong = secure.url("tool").replace(PASSWORDS["tool"], "not-the-Pa55word")
    for url in (wrong, f"redis://cpmiw-tool:{PASSWORDS['tool']}@127.0.0.1:1/0"):
        result = CliRunner().invoke(
            main,
            [*debug, "profile", "get", "sip:alice@ims.example.net"],
            env={"CPMIW_REDIS_URL": url},
        )
        printed = result.output + (str(result.exception) if debug else "")
        assert result.exit_code != 0
        assert "Pa55" not in printed
        if not debug:
            assert result.exit_code == 5 and result.stderr.count("\n") == 1
            assert "cpmiw-tool:***@" in result.stderr
