"""OTLP/HTTP transport: POST application/x-protobuf to the signal's URL with aiohttp."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping

import aiohttp

from obi import __version__
from obi.export.endpoints import redact_url
from obi.export.retry import (
    AttemptResult,
    Outcome,
    classify_http,
    parse_retry_after,
)

CONTENT_TYPE = "application/x-protobuf"
USER_AGENT = f"obi/{__version__}"


class HttpTransport:
    """Sends serialized Export requests to one URL; header values are sent as given.

    ``insecure_skip_verify`` (OBI's setting of that name): an https collector's certificate
    is not checked, so a self-signed one is accepted; the traffic is still encrypted.
    """

    def __init__(self, url: str, headers: Mapping[str, str], insecure_skip_verify: bool = False) -> None:
        # Credentials in the URL become Basic auth unless an Authorization header is given
        # (as Go's net/http does); aiohttp refuses a request that has both.
        parts = urllib.parse.urlsplit(url)
        self._url = redact_url(url)
        self._headers = {"Content-Type": CONTENT_TYPE, "User-Agent": USER_AGENT, **headers}
        has_authorization = any(k.lower() == "authorization" for k in headers)
        if parts.username is not None and not has_authorization:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            self._headers["Authorization"] = aiohttp.BasicAuth(user, password).encode()
        self._verify_certificate = not insecure_skip_verify
        self._session: aiohttp.ClientSession | None = None

    @property
    def description(self) -> str:
        return f"http {self._url}"

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # aiohttp would otherwise add its own User-Agent.
                skip_auto_headers=("User-Agent",),
                # ssl=False: TLS without verifying the certificate (True: the default checks).
                connector=aiohttp.TCPConnector(ssl=self._verify_certificate),
            )
        return self._session

    async def attempt(self, body: bytes, timeout_s: float) -> AttemptResult:
        session = self._ensure_session()
        try:
            async with session.post(
                self._url,
                data=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                await response.read()
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return classify_http(response.status, retry_after)
        except TimeoutError:
            return AttemptResult(Outcome.RETRYABLE, "http request timed out")
        except aiohttp.ClientError as err:
            return AttemptResult(Outcome.RETRYABLE, f"http connection error: {type(err).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        # Let aiohttp's connector finish closing its transports.
        await asyncio.sleep(0)
