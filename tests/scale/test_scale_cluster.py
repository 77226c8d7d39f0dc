"""Three `acme-ca serve` processes on one PostgreSQL database form one CA (DESIGN.md,
State and scale): any request may reach any process, and nothing but the database is
shared."""

from __future__ import annotations

import collections
import json

import httpx
import pytest

from acme_ca.bench.jws import generate_key, sign_jws
from tests.scale.conftest import Cluster
from tests.scale.scale_support import EXTERNAL_URL, FlowResult, db_facts, run_flows, tls_context

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ISSUANCES = 50
_BAD_NONCE = "urn:ietf:params:acme:error:badNonce"


async def test_each_request_of_a_flow_may_reach_another_process(cluster: Cluster) -> None:
    servers = await cluster.start(3)
    ports = [s.port for s in servers]
    clients = [await cluster.client(ports, offset=i % 3) for i in range(4)]
    names = [f"host{i}.cluster.test" for i in range(ISSUANCES)]
    results = await run_flows(clients, names, cluster.challtestsrv)

    failures = [r for r in results if not isinstance(r, FlowResult) or r.status != "valid"]
    assert not failures, f"{failures}\n{cluster.logs_tail()}"
    assert len(results) == ISSUANCES
    # Each client sends its requests in turn, so consecutive ones hit different processes;
    # and every process took its share.
    for transport in cluster.transports:
        assert all(a != b for a, b in zip(transport.served, transport.served[1:], strict=False))
    served = collections.Counter(p for t in cluster.transports for p in t.served)
    assert set(served) == set(ports)
    assert min(served.values()) > sum(served.values()) / 5, served
    facts = db_facts(cluster.database)
    assert len(facts["certificates"]) == ISSUANCES
    assert facts["jobs"] == 0
    assert facts["duplicate_serials"] == 0
    assert len({r.serial for r in results if isinstance(r, FlowResult)}) == ISSUANCES


async def test_a_nonce_from_one_process_is_good_once_at_any_other(cluster: Cluster) -> None:
    """RFC 8555 §6.5: one nonce, one use, whichever process issued or sees it."""
    a, b, c = await cluster.start(3)
    key = generate_key("p256")
    async with httpx.AsyncClient(verify=tls_context(cluster.data_dir), timeout=10) as http:

        def at(server_port: int, url: str) -> str:
            assert url.startswith(EXTERNAL_URL)
            return f"https://127.0.0.1:{server_port}{url.removeprefix(EXTERNAL_URL)}"

        directory = (await http.get(at(a.port, f"{EXTERNAL_URL}/directory"))).json()
        new_account = directory["newAccount"]
        nonce = (await http.head(at(a.port, directory["newNonce"]))).headers["replay-nonce"]

        async def post(port: int, payload: dict[str, object]) -> httpx.Response:
            jws = sign_jws(key, payload, url=new_account, nonce=nonce)
            return await http.post(
                at(port, new_account),
                content=json.dumps(jws).encode(),
                headers={"Content-Type": "application/jose+json"},
            )

        created = await post(b.port, {"termsOfServiceAgreed": True})
        assert created.status_code == 201, created.text
        for server in (c, a, b):
            replay = await post(server.port, {"onlyReturnExisting": True})
            assert replay.status_code == 400, replay.text
            assert replay.json()["type"] == _BAD_NONCE
            assert replay.headers["replay-nonce"]  # a nonce to retry with (RFC 8555 §6.5)
