"""A stop closes the upstream request at once: the connection is closed (never pooled),
over plain HTTP and over TLS."""

import asyncio
import time

import pytest

from streaming.providers import get_provider
from tests.provider_support import MESSAGES, assert_closed_promptly, llm, run  # noqa: F401 (llm: a fixture)
from tests.helpers import wait_for
from tests.upstream import endless_reply, running_upstream


async def test_it_closes_the_connection_when_the_task_is_cancelled(llm, upstream):
    upstream.enqueue(endless_reply(delay=0.01))
    got_some = asyncio.Event()

    async def consume():
        async for _ in get_provider().stream(MESSAGES):
            if upstream.requests[0].chunks_sent >= 3:
                got_some.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_some.wait(), 2)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_closed_promptly(upstream, upstream.requests[0], cancelled_at)


async def test_it_closes_the_connection_when_the_generator_is_closed(llm, upstream):
    upstream.enqueue(endless_reply(delay=0.01))
    stream = get_provider().stream(MESSAGES)
    assert [await anext(stream) for _ in range(3)] == ["tok1 ", "tok2 ", "tok3 "]
    closed_at = time.monotonic()
    await stream.aclose()
    await assert_closed_promptly(upstream, upstream.requests[0], closed_at)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stop_shuts_the_connection_within_its_own_call_even_when_the_loop_stays_busy(llm, upstream, provider):
    from tests.upstream import anthropic_reply

    llm.LLM_PROVIDER = provider
    upstream.enqueue(endless_reply(delay=0.01) if provider == "openai" else anthropic_reply(["x"] * 10_000, delay=0.01))
    model = get_provider()

    async def consume():
        async for _ in model.stream(MESSAGES):
            pass

    task = asyncio.create_task(consume())
    await wait_for(lambda: upstream.requests and upstream.requests[0].chunks_sent >= 3, what="a few chunks")
    decided = time.monotonic()
    model.abort()  # what Stream.stop calls
    time.sleep(0.3)  # the loop stays busy (a burst of other streams' work): no turn happens here
    request = upstream.requests[0]
    await asyncio.to_thread(upstream.wait_closed, request, 2.0)
    assert request.closed_early and request.closed_at - decided < 0.1, request.closed_at - decided
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_it_reuses_a_finished_connection_but_never_pools_a_stopped_one(llm, upstream):
    assert await run(get_provider()) == (["Hello", " world"], None)
    assert upstream.open_connections() == 1  # read to the end, back in the pool

    upstream.enqueue(endless_reply(delay=0.01))
    stream = get_provider().stream(MESSAGES)
    await anext(stream)
    assert upstream.open_connections() == 1  # the pooled connection was reused
    await stream.aclose()
    await asyncio.to_thread(upstream.wait_closed, upstream.requests[1])
    assert upstream.open_connections() == 0


@pytest.fixture
def tls_upstream(tmp_path, monkeypatch):
    """The fake upstream over HTTPS, with a certificate for 127.0.0.1 that the client trusts
    through SSL_CERT_FILE (as an operator would point it at a private CA)."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake upstream")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with running_upstream(tls=context) as server:
        yield server


async def test_it_streams_over_tls_and_a_stop_closes_that_connection_too(llm, tls_upstream):
    llm.LLM_BASE_URL = tls_upstream.base_url
    assert tls_upstream.base_url.startswith("https://")
    assert await run(get_provider()) == (["Hello", " world"], None)
    assert tls_upstream.open_connections() == 1  # read to the end, back in the pool

    tls_upstream.enqueue(endless_reply(delay=0.01))
    stream = get_provider().stream(MESSAGES)
    assert [await anext(stream) for _ in range(3)] == ["tok1 ", "tok2 ", "tok3 "]
    assert tls_upstream.open_connections() == 1  # the pooled TLS connection was reused
    closed_at = time.monotonic()
    await stream.aclose()
    await assert_closed_promptly(tls_upstream, tls_upstream.requests[1], closed_at)


async def test_it_refuses_an_upstream_whose_certificate_it_does_not_trust(llm, tls_upstream, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    llm.LLM_BASE_URL = tls_upstream.base_url
    deltas, error = await run(get_provider())
    assert deltas == [] and error.error_type == "network"
    assert tls_upstream.requests == []
