"""Shell layer: hosted images in object storage (S3, and what speaks it: R2, GCS, MinIO, OSS, SeaweedFS).

An image is kept under `<prefix>/<sha256>.<ext>`, written once from the bytes it came as, with its
Content-Type, an `Expires` header and its expiry in the object's metadata (`imagegate-expires-at`).
A repeat is stored once: `put` asks HEAD first and writes only when the object is missing or would
expire before the new request needs it (a later PUT of the same key then extends its life).

Expired objects are deleted by a bucket lifecycle rule where the service supports one (set at start,
its days cover the longest life an image may be given) and by `sweep`, which lists the prefix, since
lifetimes differ per image (an async task's result lives as long as its task).

A service that is down or slow answers within seconds (short connect and read timeouts): `put` and
`get` raise ServiceUnavailable (`image_store_unavailable`), which the finisher turns into base64
and the hosted-image route into a 503. aiobotocore is imported only when this store is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from proxy.core.errors import ServiceUnavailable
from proxy.core.rules import ImageStoreRules
from proxy.cpu import off_loop
from proxy.image_store import StoredImage, hash_name, proxy_url, valid_hash_name

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger("imagegate.s3")
EXPIRES_AT = "imagegate-expires-at"  # seconds since the epoch, as text (S3 metadata is strings)
LIFECYCLE_RULE = "imagegate-hosted-images"
MAX_PRESIGNED = 7 * 86400  # the longest a SigV4 presigned URL may live
_TIMEOUT = 5.0  # connect and read: an outage must not hang the request that needs the store
_CALL_LIMIT = 15.0  # one whole call, retries included
HASH_INLINE = 256 * 1024  # bytes hashed on the event loop; larger images are hashed in the CPU pool
SWEEP_LIMIT = 600.0  # a whole sweep (a listing of a large prefix, page by page)


class S3ImageStore:
    def __init__(self, rules: ImageStoreRules, longest: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = rules.ttl
        self.bucket = rules.bucket
        self.prefix = rules.prefix
        self._s3 = rules.s3
        self._longest = max(longest, rules.ttl)  # the longest life `put` may be asked for (lifecycle days)
        self._clock = clock
        self._client: S3Client | None = None
        self._stack = contextlib.AsyncExitStack()
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:  # the credentials stay out of reprs and tracebacks
        return f"S3ImageStore(bucket={self.bucket!r}, prefix={self.prefix!r}, url_mode={self._s3.url_mode!r})"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    async def _open(self) -> S3Client:
        async with self._opening:
            if self._client is not None:
                return self._client
            opened: S3Client = await self._stack.enter_async_context(self._create())
            self._client = opened
            return opened

    def _create(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            connect_timeout=_TIMEOUT,
            read_timeout=_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
            # Endpoints other than AWS (MinIO, SeaweedFS, R2 ...) are reached path-style.
            s3={"addressing_style": "path" if self._s3.endpoint else "auto"},
            signature_version="s3v4",
        )
        return get_session().create_client(
            "s3",
            endpoint_url=self._s3.endpoint or None,
            region_name=self._s3.region or None,
            # None: botocore's own chain (environment, shared files, an instance or pod role).
            aws_access_key_id=self._s3.access_key_id or None,
            aws_secret_access_key=self._s3.secret_access_key or None,
            config=config,
        )

    @contextlib.asynccontextmanager
    async def _call(self, limit: float = _CALL_LIMIT) -> AsyncIterator[S3Client]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            async with asyncio.timeout(limit):
                yield await self._open()
        # aiohttp's errors too: a body the service cuts short is a payload error, not an OSError.
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Answers the calls expect (a missing object) are handled inside; anything else (a bucket that is
            # gone, credentials refused, the service down) means the store cannot serve: a 503, never a 500.
            raise _unavailable(exc) from None

    async def start(self) -> None:
        """Ask the bucket to expire old images itself; a service without lifecycle rules relies on `sweep`."""
        if not self.prefix:  # a rule without a prefix would expire every object in the bucket, not only ours
            log.info("the image bucket has no prefix: no lifecycle rule; expired images are deleted by the sweeper")
            return
        try:
            async with self._call() as client:
                await _set_lifecycle(client, self.bucket, self.prefix, math.ceil(self._longest / 86400))
        except Exception as exc:  # unsupported, or not allowed to: the sweeper still deletes expired images
            log.info("no lifecycle rule on the image bucket (%s): expired images are deleted by the sweeper", _kind(exc))

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _expires_at(self, client: S3Client, key: str) -> float | None:
        """When the object under `key` expires, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            head = await client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            # Without ListBucket permission a missing key is a 403, which a HEAD cannot explain (no body): taken
            # as missing. Refused credentials then fail the PUT that follows, as they would have here.
            if _status(exc) in (403, 404):
                return None
            raise
        return _expiry(head.get("Metadata", {}))

    async def put(self, data: bytes, content_type: str, keep_for: float | None = None) -> str:
        # Hashing megabytes takes milliseconds: off the event loop, as decoding them is.
        name = hash_name(data, content_type) if len(data) < HASH_INLINE else await off_loop(hash_name, data, content_type)
        until = self._clock() + (self.ttl if keep_for is None else keep_for)
        async with self._call() as client:
            known = await self._expires_at(client, self.key(name))
            if known is not None and known >= until:
                return name  # the same image, kept at least as long: stored once
            await client.put_object(
                Bucket=self.bucket,
                Key=self.key(name),
                Body=data,
                ContentType=content_type,
                Expires=datetime.fromtimestamp(until, UTC),
                Metadata={EXPIRES_AT: str(math.ceil(until))},
            )
        return name

    async def get(self, name: str) -> StoredImage | None:
        content_type = valid_hash_name(name)
        if content_type is None:
            return None
        from botocore.exceptions import ClientError

        async with self._call() as client:
            try:
                answer = await client.get_object(Bucket=self.bucket, Key=self.key(name))
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
            async with answer["Body"] as body:
                data = await body.read()
        expires_at = _expiry(answer.get("Metadata", {}))
        if expires_at < self._clock():
            return None  # past its life though not yet swept
        return StoredImage(answer.get("ContentType") or content_type, data=data, expires_at=expires_at)

    async def sweep(self) -> int:
        """Delete expired images. The listing's times spare most HEADs: an object younger than `ttl` cannot have
        expired, one older than the longest life has; only those in between are asked for their own expiry."""
        removed = 0
        now = self._clock()
        async with self._call(SWEEP_LIMIT) as client:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key(""))
            async for page in pages:
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    if valid_hash_name(key.rpartition("/")[2]) is None:
                        continue  # not one of ours: the prefix may be shared
                    if await self._expired(client, key, _seconds(item.get("LastModified")), now):
                        await client.delete_object(Bucket=self.bucket, Key=key)
                        removed += 1
        return removed

    async def _expired(self, client: S3Client, key: str, written: float | None, now: float) -> bool:
        if written is not None and written > now - self.ttl:
            return False
        if written is not None and written < now - self._longest:
            return True
        expires = await self._expires_at(client, key)
        return expires is not None and expires < now

    async def url_for(self, name: str, public_base: str, keep_for: float) -> str:
        mode = self._s3.url_mode
        if mode == "public":
            return f"{self._s3.public_base_url}/{self.key(name)}"
        if mode == "presigned":
            async with self._call() as client:
                return await client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": self.key(name)},
                    ExpiresIn=max(1, min(int(keep_for), MAX_PRESIGNED)),
                )
        return proxy_url(name, public_base)


async def _set_lifecycle(client: S3Client, bucket: str, prefix: str, days: int) -> None:
    """Our rule in the bucket's lifecycle configuration, the operator's other rules kept."""
    from botocore.exceptions import ClientError

    try:
        rules: list[Any] = list((await client.get_bucket_lifecycle_configuration(Bucket=bucket)).get("Rules", []))
    except ClientError as exc:
        if _status(exc) != 404:
            raise
        rules = []
    mine = {"ID": LIFECYCLE_RULE, "Filter": {"Prefix": f"{prefix}/" if prefix else ""}, "Status": "Enabled",
            "Expiration": {"Days": max(1, days)}}
    rules = [rule for rule in rules if rule.get("ID") != LIFECYCLE_RULE] + [mine]
    await client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})


def _seconds(moment: Any) -> float | None:
    """A listing's LastModified (a datetime) as Unix seconds."""
    return moment.timestamp() if isinstance(moment, datetime) else None


def _expiry(metadata: dict[str, str]) -> float:
    try:
        return float(metadata.get(EXPIRES_AT, "0"))
    except ValueError:
        return 0.0  # not a value this proxy wrote: treated as expired


def _status(exc: Any) -> int:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchKey", "NotFound", "NoSuchLifecycleConfiguration", "404"):
        return 404
    return int(status) if isinstance(status, int) else 500


def _missing(exc: Any) -> bool:
    """No such object. Without ListBucket permission S3 says AccessDenied for a missing key, so that counts
    too; refused credentials (SignatureDoesNotMatch, InvalidAccessKeyId) do not: the store is unusable."""
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
    return _status(exc) == 404 or code == "AccessDenied"


def _kind(exc: BaseException) -> str:
    """What went wrong, without the message (which may quote a request's signature or key id)."""
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
    return f"{type(exc).__name__} {code}" if code else type(exc).__name__


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    log.warning("the image store (object storage) is unavailable: %s", _kind(exc))
    return ServiceUnavailable(
        f"The proxy's image store is unavailable: {_kind(exc)}. Try again shortly.", code="image_store_unavailable"
    )
