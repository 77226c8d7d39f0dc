"""A database failover as ACME clients see it (docs/DEPLOYMENT.md): while the database
is unreachable, requests that need it fail fast with a problem document and a 5xx;
once it is back, the same processes serve again, with no restart, and the client's
order goes on to its certificate."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from acme_ca.bench.client import AcmeProblem, build_csr
from acme_ca.bench.jws import generate_key
from tests.scale.conftest import Cluster
from tests.scale.scale_support import EXTERNAL_URL, TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

_SERVER_INTERNAL = "urn:ietf:params:acme:error:serverInternal"


async def test_requests_fail_cleanly_while_the_database_is_away(
    cluster_factory: Callable[..., Cluster], scale_database: str
) -> None:
    direct = make_url(scale_database)
    proxy = TcpProxy((direct.host or "127.0.0.1", direct.port or 5432))
    await proxy.start()
    # The servers reach the database through the proxy; `init` (blocking) goes direct.
    via_proxy = direct.set(host="127.0.0.1", port=proxy.port)
    cluster = cluster_factory(
        via_proxy.render_as_string(hide_password=False), init_database=scale_database
    )
    try:
        (server,) = await cluster.start(1)
        client = await cluster.client([server.port])
        name = "failover.scale.test"
        order = await client.new_order([name])
        assert order.location is not None
        authz = (await client.post_as_get(order.body["authorizations"][0])).body
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        cluster.challtestsrv.add_http01(chall["token"], client.key_authorization(chall["token"]))
        await client.respond_challenge(chall["url"])
        await client.poll(order.location, until={"ready"}, timeout=20, max_delay=0.5)

        await proxy.cut()
        started = time.monotonic()
        # A fresh nonce needs no database (it is MACed, RFC 8555 §6.5), nor the directory.
        assert await client.new_nonce()
        directory = await cluster.http([server.port]).get(f"{EXTERNAL_URL}/directory")
        assert directory.status_code == 200
        with pytest.raises(AcmeProblem) as outage:
            await client.post_as_get(order.location)
        assert outage.value.status >= 500
        assert outage.value.type == _SERVER_INTERNAL
        assert time.monotonic() - started < 15, "a request hung on the dead database"

        await proxy.start()
        final = await client.finalize(
            order.body["finalize"], build_csr(generate_key("p256"), [name])
        )
        if final.body["status"] != "valid":
            final = await client.poll(order.location, until={"valid"}, timeout=20)
        assert (await client.download_certificate(final.body["certificate"])).content
    finally:
        await proxy.cut()
