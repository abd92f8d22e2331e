"""Core layer: rules.yaml parsed once into frozen values, failing with every problem and its YAML path.

Loading is a pure function of the YAML text, the environment (for `${VAR}` interpolation) and the
channel schemas the adapters declare; nothing here reads a file or `os.environ`.
"""

from __future__ import annotations

import fnmatch
import functools
import hmac
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import yaml

from proxy.core import rules_yaml
from proxy.core.budgets import Budget
from proxy.core.channel_settings import Relation, Setting, parse_settings
from proxy.core.errors import InvalidRequest, NotFound
from proxy.core.formats import canonical_format
from proxy.core.interpolate import interpolate
from proxy.core.limit_windows import ClientKey, Limits, default_name, key_id
from proxy.core.pricing import Price, PriceError, parse_price, usd
from proxy.core.request import validate_option
from proxy.core.size_rules import SizeRules, size_problem, widest
from proxy.core.sizes import normalise_size, parse_ratio, parse_size
from proxy.core.translate import ORIGINAL, UPSTREAM, Translation
from proxy.core.webhook_signature import secret_problem

PASSTHROUGH_KEY = "passthrough"
DEFAULT_MAX_N = 10
DEFAULT_TIMEOUT = 300.0
DEFAULT_CONCURRENCY = 4
DEFAULT_DEADLINE = 900.0
MAX_WORKERS = 64  # worker processes (proxy.workers): far beyond any machine this serves from one address
_GLOB_CHARS = frozenset("*?[")
# Fields every upstream understands, and fields the proxy itself honours (see proxy.core.plan).
ALWAYS_FORWARDED = frozenset({"size", "quality"})
PROXY_FIELDS = frozenset({"response_format", "async", "retries", "stream", "callback_url"})
# Fields the proxy honours for every model, natively or by converting the image (see proxy.core.formats):
# which channel is asked for them is the adapter's declaration, not the model's passthrough list.
FORMAT_FIELDS = frozenset({"output_format", "output_compression"})


@dataclass(frozen=True)
class ChannelSchema:
    """What an adapter needs from a channel entry, beyond the keys every channel has."""

    # The settings its channels may set, with their types and ranges (proxy.core.channel_settings).
    settings: Mapping[str, Setting] = field(default_factory=lambda: MappingProxyType({}))
    relations: tuple[Relation, ...] = ()
    requires_base_url: bool = True
    uses_key: bool = True


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    base_url: str = ""
    # None: no key is sent. The literal "passthrough": the client's own bearer key is forwarded.
    api_key: str | None = None
    # Variables that were unset where the key should come from: such a channel is not used.
    missing_key: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY  # simultaneous calls to this channel when one request fans out
    # Whole-job limit for task providers (create + every poll); one call is still bounded by `timeout`.
    deadline: float = DEFAULT_DEADLINE
    # A timeout after the request was sent may mean the image was made and billed: not retried unless asked.
    retry_timeouts: bool = False
    # Load spreading: a model's channels with weight > 0 share its first attempts in proportion;
    # weight 0 (the default) keeps a channel in plain failover order.
    weight: int = 0
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def passthrough_key(self) -> bool:
        return self.api_key == PASSTHROUGH_KEY

    @property
    def usable(self) -> bool:
        return not self.missing_key

    def __repr__(self) -> str:
        # Keep keys out of tracebacks and debug logs.
        return f"Channel(name={self.name!r}, type={self.type!r}, base_url={self.base_url!r})"


@dataclass(frozen=True)
class ModelRule:
    pattern: str
    channels: tuple[str, ...]
    upstream_model: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sizes: tuple[str, ...] | None = None  # None: any WxH (and auto) is accepted, unless size_rules say otherwise
    size_rules: SizeRules | None = None  # for providers that take a range: what a WxH must satisfy
    max_n: int = DEFAULT_MAX_N
    passthrough: frozenset[str] = frozenset()
    values: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: MappingProxyType({}))
    translation: Translation = field(default_factory=Translation)
    # Per-channel names for the upstream model (an alias served by several providers): channel -> name.
    upstream_models: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    price: Price | None = None  # None: the model's images are not priced (their cost is not known)

    def upstream_for(self, channel: str, requested: str) -> str:
        return self.upstream_models.get(channel) or self.upstream_model or requested

    @property
    def is_glob(self) -> bool:
        return any(char in _GLOB_CHARS for char in self.pattern)


URL_MODES = ("proxy", "public", "presigned")


@dataclass(frozen=True)
class S3Rules:
    """`server.images.s3`: how to reach the bucket `server.images.store: s3://bucket/prefix` names."""

    endpoint: str = ""  # empty: AWS itself; else R2, GCS, MinIO, OSS, SeaweedFS ... (path-style addressing)
    region: str = ""
    access_key_id: str = field(default="", repr=False)  # empty: botocore's own chain (environment, role)
    secret_access_key: str = field(default="", repr=False)
    url_mode: str = "proxy"  # proxy: /images/<name> | public: public_base_url/<key> | presigned: a signed GET URL
    public_base_url: str = ""  # the bucket's or a CDN's address, for url_mode public


@dataclass(frozen=True)
class ImageStoreRules:
    path: str = ""  # empty: a directory under the system's temporary directory
    ttl: int = 3600  # seconds a hosted image stays retrievable (OpenAI's URLs live 60 minutes)
    store: str = ""  # empty: the directory (or Redis, with server.state); `s3://bucket/prefix`: object storage
    s3: S3Rules = S3Rules()

    @property
    def bucket(self) -> str:
        return self.store.removeprefix("s3://").partition("/")[0]

    @property
    def prefix(self) -> str:
        return self.store.removeprefix("s3://").partition("/")[2].strip("/")


@dataclass(frozen=True)
class DownloadRules:
    max_bytes: int = 50 * 1024 * 1024
    timeout: float = 60.0
    # Hosts a client's image URL may name even though they resolve to private or loopback addresses.
    allow_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskRules:
    retention: int = 86400  # seconds an async task's record and result stay retrievable
    # Seconds a process may go silent before another takes over its unfinished tasks (proxy.task_keeper):
    # each process renews the leases of the tasks it runs every third of this.
    lease: float = 30.0


@dataclass(frozen=True)
class WebhookRules:
    """Signed deliveries of async tasks' ends (proxy.webhooks; README, Webhooks)."""

    secrets: tuple[str, ...] = field(default=(), repr=False)  # `whsec_...`: every key without secrets of its own
    retry_for: float = 86400.0  # seconds after a task ends that its delivery is retried
    timeout: float = 10.0  # seconds one attempt may take
    # Hosts a callback_url may name even though they resolve to private or loopback addresses.
    allow_hosts: tuple[str, ...] = ()
    min_backoff: float = 1.0  # seconds before the first retry (then 2x, 4x ... up to an hour, jittered)


@dataclass(frozen=True)
class MetricsRules:
    token: str = field(default="", repr=False)  # when set, /metrics needs `Authorization: Bearer <token>`
    public: bool = False  # without a token: False serves /metrics to loopback clients only


def same_key(known: str, presented: str) -> bool:
    """A constant-time comparison of a configured key with one a client sent (whose header may hold bytes that
    are not UTF-8: aiohttp keeps them as surrogates)."""
    return hmac.compare_digest(known.encode("utf-8", "surrogateescape"), presented.encode("utf-8", "surrogateescape"))


ADMIN_NAME = "admin"  # the client name an admin key's requests are counted and recorded under


@dataclass(frozen=True)
class ServerRules:
    clients: tuple[ClientKey, ...] = field(default=(), repr=False)  # secrets: kept out of reprs and tracebacks
    public_base_url: str = ""  # empty: built from the request's own scheme and Host
    max_request_bytes: int = 64 * 1024 * 1024
    max_retries: int = 2
    images: ImageStoreRules = ImageStoreRules()
    download: DownloadRules = DownloadRules()
    tasks: TaskRules = TaskRules()
    webhooks: WebhookRules = WebhookRules()
    metrics: MetricsRules = MetricsRules()
    log_prompts: bool = False  # prompts in access lines: off unless the operator opts in
    shutdown_grace: float = 300.0  # seconds in-flight generations and streams get to finish on SIGTERM
    # A connection must deliver a request head within this long after it opens or goes idle (slowloris),
    # and an idle keep-alive connection is closed after it.
    keepalive_timeout: float = 15.0
    body_timeout: float = 120.0  # seconds to receive a whole request body (uploads included)
    # Processes serving the address (proxy.workers): a number, or "auto" for one per CPU. Read at start-up only.
    workers: str = "1"
    # Where shared state lives: "memory" (one process) or a redis:// URL (several replicas).
    state: str = field(default="memory", repr=False)
    # The ledger's database: "" is an SQLite file beside the image store's directory (the shell places it),
    # else `sqlite:///<path>` or `postgresql://...` (kept out of reprs: the URL may hold a password).
    database: str = field(default="", repr=False)
    limits: Limits = field(default_factory=Limits)  # for every key without limits of its own
    budget: Budget = field(default_factory=Budget)  # for every key without a budget of its own
    admin_keys: tuple[str, ...] = field(default=(), repr=False)  # keys for the /admin/ routes (usage of every key)
    idempotency_retention: int = 86400

    @property
    def api_keys(self) -> tuple[str, ...]:
        return tuple(client.key for client in self.clients)

    def client(self, key: str | None) -> ClientKey | None:
        """The client a key belongs to; an admin key is a client too, named "admin", under the server's
        default limits and budget (the console generates with it)."""
        if not key:
            return None
        # Every candidate compared in constant time: a key's prefix cannot be found by timing answers.
        found = None
        for client in self.clients:
            if same_key(client.key, key):
                found = client
        if found is None and self.is_admin(key):
            return ClientKey(key=key, name=ADMIN_NAME)
        return found

    def is_admin(self, key: str | None) -> bool:
        """Whether `key` is one of `admin_keys` (constant-time comparisons)."""
        return bool(key) and any([same_key(admin, key or "") for admin in self.admin_keys])

    def webhook_secrets_of(self, secret_set: str) -> tuple[str, ...]:
        """The secrets a delivery is signed with, from the rules in force when it is sent: `key:<key id>` is that
        key's own set while it has one, anything else (or a key that lost its own) the server's."""
        if secret_set.startswith("key:"):
            for client in self.clients:
                if key_id(client.key) == secret_set.removeprefix("key:") and client.webhook_secrets:
                    return client.webhook_secrets
        return self.webhooks.secrets

    def limits_for(self, key: str | None) -> Limits:
        client = self.client(key)
        return client.limits if client is not None and client.limits is not None else self.limits

    def budget_for(self, key: str | None) -> Budget:
        client = self.client(key)
        return client.budget if client is not None and client.budget is not None else self.budget


@dataclass(frozen=True)
class Rules:
    server: ServerRules
    channels: Mapping[str, Channel]
    models: tuple[ModelRule, ...]
    default_channel: str | None = None
    warnings: tuple[str, ...] = ()

    @functools.cached_property
    def _exact_models(self) -> Mapping[str, ModelRule]:
        # Built once per rules (each request looks one up): of two rules with one name the first wins, as in a scan.
        exact: dict[str, ModelRule] = {}
        for rule in self.models:
            if not rule.is_glob:
                exact.setdefault(rule.pattern, rule)
        return MappingProxyType(exact)

    @functools.cached_property
    def _glob_models(self) -> tuple[ModelRule, ...]:
        return tuple(rule for rule in self.models if rule.is_glob)

    def match_model(self, name: str) -> ModelRule:
        """Exact name beats a glob; among globs the first in the file wins (ARCHITECTURE.md §4)."""
        exact = self._exact_models.get(name)
        if exact is not None:
            return exact
        for rule in self._glob_models:
            if fnmatch.fnmatchcase(name, rule.pattern):
                return rule
        raise NotFound(f"The model '{name}' does not exist.", param="model", code="model_not_found")


@dataclass(frozen=True)
class RuleProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RulesError(Exception):
    """Every problem found in a rules file, each naming its YAML path."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems


class _Reader:
    """Collects problems while walking the YAML tree, so that one run reports all of them."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[RuleProblem] = []
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(RuleProblem(path, message))

    def mapping(self, path: str, value: Any, allowed: frozenset[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if not isinstance(key, str):
                self.problem(path, f"key {key!r} is not a string")
            elif allowed is not None and key not in allowed:
                self.problem(_join(path, key), f"unknown key (known: {', '.join(sorted(allowed))})")
        return {key: item for key, item in value.items() if isinstance(key, str)}

    def string(self, path: str, value: Any, *, secret: bool = False) -> tuple[str, tuple[str, ...]]:
        """The interpolated string and the variables it missed; a missed variable is a problem unless secret."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.problem(path, f"expected a string, got {type(value).__name__}")
            return "", ()
        result = interpolate(str(value), self.env)
        if result.missing and not secret:
            self.problem(path, f"environment variable {', '.join(result.missing)} is not set")
        if "${" in result.value:  # kept as text, a reference such as `${A-}` would be a key of its own (not quoted: a secret)
            self.problem(path, "a `${...}` reference that is not `${VAR}` or `${VAR:-default}`")
        return result.value, result.missing

    def number(self, path: str, value: Any, *, minimum: float, integer: bool = False) -> float | None:
        if isinstance(value, str):
            text, _ = self.string(path, value)
            try:
                value = int(text) if integer else float(text)
            except ValueError:
                self.problem(path, f"expected a number, got {text!r}")
                return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            self.problem(path, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
            return None
        if not math.isfinite(value):  # NaN passes every comparison below; an infinite timeout never ends
            self.problem(path, f"expected a finite number, got {value!r}")
            return None
        if value < minimum:
            self.problem(path, f"must be at least {minimum:g}, got {value!r}")
            return None
        return value

    def string_list(self, path: str, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(path, f"expected a list, got {type(value).__name__}")
            return []
        return [self.string(f"{path}[{index}]", item)[0] for index, item in enumerate(value)]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_TOP_KEYS = frozenset({"server", "default_channel", "channels", "models"})
_SERVER_KEYS = frozenset(
    {"api_keys", "public_base_url", "max_request_bytes", "max_retries", "images", "download", "tasks"}
    | {"metrics", "log_prompts", "shutdown_grace", "state", "limits", "idempotency", "keepalive_timeout", "body_timeout"}
    | {"budget", "database", "admin_keys", "webhooks", "workers"}
)
_WEBHOOK_KEYS = frozenset({"secrets", "retry_for", "timeout", "allow_hosts", "min_backoff"})
_CLIENT_KEYS = frozenset({"key", "name", "limits", "budget", "webhook_url", "webhook_secrets"})
_BUDGET_KEYS = frozenset({"usd_per_day", "usd_per_month"})
_LIMIT_KEYS = frozenset({"requests_per_minute", "concurrent", "images_per_day"})
_CHANNEL_KEYS = frozenset(
    {"type", "base_url", "api_key", "timeout", "concurrency", "deadline", "retry_timeouts", "weight", "headers"}
)
_MODEL_KEYS = frozenset(
    {"channels", "upstream_model", "defaults", "sizes", "size_rules", "max_n", "passthrough", "values", "price"}
    | {"translate", "upstream_sizes", "upstream_size_multiple", "prompt_suffix", "revised_prompt"}
)


def _load_server(reader: _Reader, data: Any) -> ServerRules:
    raw = reader.mapping("server", data, _SERVER_KEYS)
    if raw.get("api_keys") is not None and not isinstance(raw.get("api_keys"), list):
        reader.problem("server.api_keys", "expected a list of keys")
    loaded = [
        (index, client)
        for index, item in enumerate(raw.get("api_keys") or [])
        if (client := _load_client(reader, f"server.api_keys[{index}]", item)) is not None
    ]
    _unique_keys(reader, loaded)
    clients = [client for _, client in loaded]
    idempotency = reader.mapping("server.idempotency", raw.get("idempotency"), frozenset({"retention"}))
    images = reader.mapping("server.images", raw.get("images"), frozenset({"path", "ttl", "store", "s3"}))
    download = reader.mapping("server.download", raw.get("download"), frozenset({"max_bytes", "timeout", "allow_hosts"}))
    tasks = reader.mapping("server.tasks", raw.get("tasks"), frozenset({"retention", "lease"}))
    metrics = reader.mapping("server.metrics", raw.get("metrics"), frozenset({"token", "public"}))
    defaults = ServerRules()
    return ServerRules(
        clients=tuple(clients),
        public_base_url=reader.string("server.public_base_url", raw.get("public_base_url", ""))[0].rstrip("/"),
        max_request_bytes=_integer(reader, "server", raw, "max_request_bytes", defaults.max_request_bytes, 1024),
        max_retries=_integer(reader, "server", raw, "max_retries", defaults.max_retries, 0),
        images=_load_images(reader, images),
        download=DownloadRules(
            max_bytes=_integer(reader, "server.download", download, "max_bytes", defaults.download.max_bytes, 1),
            timeout=_seconds(reader, "server.download", download, "timeout", defaults.download.timeout),
            allow_hosts=tuple(reader.string_list("server.download.allow_hosts", download.get("allow_hosts"))),
        ),
        tasks=TaskRules(
            retention=_integer(reader, "server.tasks", tasks, "retention", defaults.tasks.retention, 1),
            lease=_seconds(reader, "server.tasks", tasks, "lease", defaults.tasks.lease),
        ),
        webhooks=_load_webhooks(reader, raw.get("webhooks"), clients),
        metrics=MetricsRules(
            token=reader.string("server.metrics.token", metrics.get("token", ""))[0],
            public=_flag(reader, "server.metrics", metrics, "public"),
        ),
        log_prompts=_flag(reader, "server", raw, "log_prompts"),
        shutdown_grace=_seconds(reader, "server", raw, "shutdown_grace", defaults.shutdown_grace),
        keepalive_timeout=_seconds(reader, "server", raw, "keepalive_timeout", defaults.keepalive_timeout),
        body_timeout=_seconds(reader, "server", raw, "body_timeout", defaults.body_timeout),
        workers=_load_workers(reader, raw.get("workers", 1)),
        state=_load_state(reader, raw.get("state", "memory")),
        database=_load_database(reader, raw.get("database")),
        limits=_load_limits(reader, "server.limits", raw.get("limits")),
        budget=_load_budget(reader, "server.budget", raw.get("budget")),
        admin_keys=_load_admin_keys(reader, raw.get("admin_keys")),
        idempotency_retention=_integer(reader, "server.idempotency", idempotency, "retention", defaults.idempotency_retention, 1),
    )


def _load_webhooks(reader: _Reader, data: Any, clients: list[ClientKey]) -> WebhookRules:
    raw = reader.mapping("server.webhooks", data, _WEBHOOK_KEYS)
    path, defaults = "server.webhooks", WebhookRules()
    rules = WebhookRules(
        secrets=_webhook_secrets(reader, f"{path}.secrets", raw.get("secrets")),
        retry_for=_seconds(reader, path, raw, "retry_for", defaults.retry_for),
        timeout=_seconds(reader, path, raw, "timeout", defaults.timeout),
        allow_hosts=tuple(host.lower() for host in reader.string_list(f"{path}.allow_hosts", raw.get("allow_hosts"))),
        min_backoff=_seconds(reader, path, raw, "min_backoff", defaults.min_backoff),
    )
    for index, client in enumerate(clients):
        # A webhook is always signed: a default URL without a secret to sign with is a mistake found now.
        if client.webhook_url and not (client.webhook_secrets or rules.secrets):
            reader.problem(f"server.api_keys[{index}].webhook_url", "needs webhook_secrets, or server.webhooks.secrets")
    return rules


def _webhook_secrets(reader: _Reader, path: str, value: Any) -> tuple[str, ...]:
    """`whsec_` secrets; one whose variable is unset is left out (with a warning), and none is ever quoted."""
    if value is not None and not isinstance(value, list):
        reader.problem(path, "expected a list of whsec_ secrets")
        return ()
    secrets = []
    for index, item in enumerate(value or []):
        secret, missing = reader.string(f"{path}[{index}]", item, secret=True)
        if missing:
            reader.warnings.append(f"{path}[{index}] is left out: {', '.join(missing)} is not set")
            continue
        problem = secret_problem(secret)
        if problem is not None:
            reader.problem(f"{path}[{index}]", problem)
            continue
        secrets.append(secret)
    return tuple(secrets)


def _webhook_url(reader: _Reader, path: str, value: Any) -> str:
    url = reader.string(path, value)[0] if value is not None else ""
    if url and not url.startswith(("http://", "https://")):
        reader.problem(path, "expected an http:// or https:// URL")
        return ""
    return url


def _load_database(reader: _Reader, value: Any) -> str:
    """`server.database` as a URL: a bare path is an SQLite file; "" (absent) is the default file."""
    if value is None:
        return ""
    text = reader.string("server.database", value)[0].strip()
    scheme, separator, rest = text.partition("://")
    if not text or not separator:
        return f"sqlite:///{text}" if text else ""
    if scheme in ("postgresql", "postgres") and rest:
        return f"postgresql://{rest}"
    if scheme == "sqlite" and rest.startswith("/") and rest != "/":
        return text
    # Never echo the URL: it may hold a password. Its scheme is enough to say what is wrong.
    reader.problem("server.database", f"expected a file path, sqlite:///<path> or postgresql://..., got a {scheme}:// URL")
    return ""


def _load_images(reader: _Reader, images: Mapping[str, Any]) -> ImageStoreRules:
    store = reader.string("server.images.store", images.get("store", ""))[0].strip()
    if store and (not store.startswith("s3://") or len(ImageStoreRules(store=store).bucket) < 3):
        reader.problem("server.images.store", f"expected s3://bucket/prefix, got {store!r}")
    if images.get("s3") is not None and not store:
        reader.problem("server.images.s3", "needs server.images.store: s3://bucket/prefix")
    return ImageStoreRules(
        path=reader.string("server.images.path", images.get("path", ""))[0],
        ttl=_integer(reader, "server.images", images, "ttl", ImageStoreRules.ttl, 1),
        store=store,
        s3=_load_s3(reader, images.get("s3")),
    )


_S3_KEYS = frozenset({"endpoint", "region", "access_key_id", "secret_access_key", "url_mode", "public_base_url"})


def _load_s3(reader: _Reader, data: Any) -> S3Rules:
    path = "server.images.s3"
    raw = reader.mapping(path, data, _S3_KEYS)
    text = {key: reader.string(f"{path}.{key}", raw.get(key, ""))[0].strip() for key in _S3_KEYS}
    if bool(text["access_key_id"]) != bool(text["secret_access_key"]):
        reader.problem(path, "access_key_id and secret_access_key go together (or neither: botocore's own credentials)")
    mode = text["url_mode"] or "proxy"
    if mode not in URL_MODES:
        reader.problem(f"{path}.url_mode", f"expected one of {', '.join(URL_MODES)}, got {mode!r}")
    if mode == "public" and not text["public_base_url"]:
        reader.problem(f"{path}.public_base_url", "url_mode public needs the bucket's or CDN's public address")
    for key in ("endpoint", "public_base_url"):
        if text[key] and not text[key].startswith(("http://", "https://")):
            reader.problem(f"{path}.{key}", f"expected an http(s):// URL, got {text[key]!r}")
    return S3Rules(
        endpoint=text["endpoint"].rstrip("/"),
        region=text["region"],
        access_key_id=text["access_key_id"],
        secret_access_key=text["secret_access_key"],
        url_mode=mode,
        public_base_url=text["public_base_url"].rstrip("/"),
    )


def _load_workers(reader: _Reader, value: Any) -> str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS):
        return str(value)
    reader.problem("server.workers", f"expected auto or a whole number from 1 to {MAX_WORKERS}, got {value!r}")
    return "1"


def _load_state(reader: _Reader, value: Any) -> str:
    state = reader.string("server.state", value)[0] or "memory"
    if state != "memory" and not state.startswith(("redis://", "rediss://", "unix://")):
        reader.problem("server.state", f"expected 'memory' or a redis:// URL, got {state.split('@')[-1]!r}")
    return state


def _load_limits(reader: _Reader, path: str, data: Any) -> Limits:
    raw = reader.mapping(path, data, _LIMIT_KEYS)
    values = {
        key: int(number) if (number := reader.number(f"{path}.{key}", raw[key], minimum=1, integer=True)) else None
        for key in _LIMIT_KEYS
        if key in raw
    }
    return Limits(**values)


def _load_admin_keys(reader: _Reader, data: Any) -> tuple[str, ...]:
    """Keys for the /admin/ routes; an unset variable is a problem (it must not open the routes to an empty key)."""
    keys = []
    for index, value in enumerate(reader.string_list("server.admin_keys", data)):
        if not value:
            reader.problem(f"server.admin_keys[{index}]", "an admin key must not be empty")
        keys.append(value)
    return tuple(key for key in keys if key)


def _load_budget(reader: _Reader, path: str, data: Any) -> Budget:
    raw = reader.mapping(path, data, _BUDGET_KEYS)
    amounts: dict[str, Decimal] = {}
    for key in _BUDGET_KEYS & raw.keys():
        value = raw[key]
        amount = usd(value) if not isinstance(value, str) else None  # a budget is written as a number
        if amount is None or amount <= 0:
            reader.problem(f"{path}.{key}", f"expected an amount in USD above 0, got {value!r}")
            continue
        amounts[key] = amount
    return Budget(**amounts)


def _unique_keys(reader: _Reader, clients: list[tuple[int, ClientKey]]) -> None:
    """A key listed twice would be one client (the last), its other entry's limits and budget gone. `clients`:
    each with its place in the list."""
    first: dict[str, int] = {}
    for index, client in clients:
        if first.setdefault(client.key, index) != index:  # the key itself is never quoted
            reader.problem(f"server.api_keys[{index}]", f"the same key as server.api_keys[{first[client.key]}]")


def _load_client(reader: _Reader, path: str, item: Any) -> ClientKey | None:
    """A key as a string, or `{key, name?, limits?, budget?, webhook_url?, webhook_secrets?}`. An unset
    variable is a problem: it must not open auth."""
    webhook_url, webhook_secrets = "", None
    if isinstance(item, dict):
        raw = reader.mapping(path, item, _CLIENT_KEYS)
        webhook_url = _webhook_url(reader, f"{path}.webhook_url", raw.get("webhook_url"))
        if "webhook_secrets" in raw:
            webhook_secrets = _webhook_secrets(reader, f"{path}.webhook_secrets", raw["webhook_secrets"]) or None
        key, missing = reader.string(f"{path}.key", raw.get("key", ""))
        name = reader.string(f"{path}.name", raw["name"])[0] if "name" in raw else ""
        limits = _load_limits(reader, f"{path}.limits", raw.get("limits")) if "limits" in raw else None
        budget = _load_budget(reader, f"{path}.budget", raw.get("budget")) if "budget" in raw else None
    else:
        (key, missing), name, limits, budget = reader.string(path, item), "", None, None
    if not key:  # dropped, it could leave the proxy open: a list of keys means keys are wanted
        if not missing:  # an unset variable was reported already
            reader.problem(f"{path}.key" if isinstance(item, dict) else path, "a client key must not be empty")
        return None
    if name == ADMIN_NAME:  # the admin keys' own name: a client under it would share their usage and counters
        reader.problem(f"{path}.name", f"the name '{ADMIN_NAME}' is kept for server.admin_keys")
    return ClientKey(key=key, name=name or default_name(key), limits=limits, budget=budget, webhook_url=webhook_url,
                     webhook_secrets=webhook_secrets)


def _integer(reader: _Reader, path: str, raw: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = reader.number(f"{path}.{key}", raw.get(key, default), minimum=minimum, integer=True)
    return default if value is None else int(value)


def _seconds(reader: _Reader, path: str, raw: Mapping[str, Any], key: str, default: float) -> float:
    value = reader.number(f"{path}.{key}", raw.get(key, default), minimum=0.001)
    return default if value is None else float(value)


def _load_channel(reader: _Reader, name: str, data: Any, schemas: Mapping[str, ChannelSchema]) -> Channel | None:
    path = f"channels.{name}"
    if not isinstance(data, dict) or "type" not in data:
        reader.problem(path, "a channel needs at least a `type`")
        return None
    kind, _ = reader.string(f"{path}.type", data["type"])
    schema = schemas.get(kind)
    if schema is None:
        reader.problem(f"{path}.type", f"unknown adapter type '{kind}' (known: {', '.join(sorted(schemas))})")
        return None
    raw = reader.mapping(path, data, _CHANNEL_KEYS | frozenset(schema.settings))
    base_url = reader.string(f"{path}.base_url", raw["base_url"])[0].rstrip("/") if "base_url" in raw else ""
    if schema.requires_base_url and not base_url:
        reader.problem(f"{path}.base_url", f"a '{kind}' channel needs a base_url")
    if base_url and not base_url.startswith(("http://", "https://")):
        reader.problem(f"{path}.base_url", f"expected an http:// or https:// URL, got {base_url!r}")
    api_key: str | None = None
    missing: tuple[str, ...] = ()
    if "api_key" in raw and schema.uses_key:
        api_key, missing = reader.string(f"{path}.api_key", raw["api_key"], secret=True)
        if not api_key and not missing:
            missing = ("api_key",)
        if missing:
            reader.warnings.append(f"channel '{name}' is disabled: {', '.join(missing)} is not set")
    headers = reader.mapping(f"{path}.headers", raw.get("headers"))
    timeout = reader.number(f"{path}.timeout", raw.get("timeout", DEFAULT_TIMEOUT), minimum=0.001)
    return Channel(
        name=name,
        type=kind,
        base_url=base_url,
        api_key=api_key or None,
        missing_key=missing,
        timeout=float(timeout or DEFAULT_TIMEOUT),
        concurrency=_integer(reader, path, raw, "concurrency", DEFAULT_CONCURRENCY, 1),
        deadline=_seconds(reader, path, raw, "deadline", DEFAULT_DEADLINE),
        retry_timeouts=_flag(reader, path, raw, "retry_timeouts"),
        weight=_integer(reader, path, raw, "weight", 0, 0),
        headers=MappingProxyType({key: reader.string(f"{path}.headers.{key}", value)[0] for key, value in headers.items()}),
        settings=_settings(reader, path, raw, schema),
    )


def _settings(reader: _Reader, path: str, raw: Mapping[str, Any], schema: ChannelSchema) -> Mapping[str, Any]:
    """The adapter's settings, checked against its declaration (every declared one, defaults filled in)."""
    written = {key: _setting(reader, f"{path}.{key}", raw[key]) for key in schema.settings if key in raw}
    values, problems = parse_settings(written, schema.settings, schema.relations)
    for key, message in problems:
        reader.problem(f"{path}.{key}", message)
    return MappingProxyType(values)


def _flag(reader: _Reader, path: str, raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        reader.problem(f"{path}.{key}", f"expected true or false, got {value!r}")
        return False
    return value


def _setting(reader: _Reader, path: str, value: Any) -> Any:
    """Adapter settings interpolate like every other string in the file; other values stay as written.

    A value that came from the environment (`wait: ${WAIT:-60}`) gets the number or boolean it spells,
    as it would have had written literally; anything else stays a string.
    """
    if not isinstance(value, str):
        return value
    text = reader.string(path, value)[0]
    return _scalar(text) if "${" in value else text


def _scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _load_defaults(reader: _Reader, path: str, data: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for key, value in reader.mapping(path, data).items():
        if isinstance(value, str):
            value = reader.string(f"{path}.{key}", value)[0]
        try:
            # Defaults go through the same validators as client values, so a bad default fails at load.
            defaults[key] = validate_option(key, value)
        except InvalidRequest as exc:
            reader.problem(f"{path}.{key}", exc.message)
    return defaults


def _load_sizes(reader: _Reader, path: str, data: Any) -> tuple[str, ...] | None:
    if data is None:
        return None
    sizes: list[str] = []
    for index, item in enumerate(reader.string_list(path, data)):
        size = normalise_size(item)
        if size is None:
            reader.problem(f"{path}[{index}]", f"{item!r} is not WxH (e.g. 1024x1024) or 'auto'")
        else:
            sizes.append(size)
    return tuple(sizes)


_SIZE_RULE_BOUNDS = (("min_side", "max_side"), ("min_pixels", "max_pixels"))
_SIZE_RULE_KEYS = frozenset({"multiple_of", "max_aspect_ratio", "auto"} | {key for pair in _SIZE_RULE_BOUNDS for key in pair})


def _load_size_rules(reader: _Reader, path: str, data: Any) -> SizeRules | None:
    if data is None:
        return None
    raw = reader.mapping(path, data, _SIZE_RULE_KEYS)
    if not raw:
        reader.problem(path, f"expected at least one of {', '.join(sorted(_SIZE_RULE_KEYS))}")
        return None
    numbers = {
        key: int(value)
        for key in sorted(_SIZE_RULE_KEYS - {"max_aspect_ratio", "auto"})
        if key in raw and (value := reader.number(f"{path}.{key}", raw[key], minimum=1, integer=True)) is not None
    }
    for low, high in _SIZE_RULE_BOUNDS:
        if low in numbers and high in numbers and numbers[low] > numbers[high]:
            reader.problem(f"{path}.{low}", f"{numbers[low]} is more than {high} ({numbers[high]})")
    ratio = _load_ratio(reader, f"{path}.max_aspect_ratio", raw["max_aspect_ratio"]) if "max_aspect_ratio" in raw else None
    return SizeRules(max_aspect_ratio=ratio, auto=_flag(reader, path, raw, "auto"), **numbers)


def _load_ratio(reader: _Reader, path: str, value: Any) -> tuple[int, int] | None:
    """`"3:1"` or `"21:9"` (either orientation), or a whole number N meaning N:1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return (value, 1)
    ratio = parse_ratio(value) if isinstance(value, str) else None
    if ratio is None:
        reader.problem(path, f"expected W:H (e.g. 3:1 or 21:9) or a whole number, got {value!r}")
        return None
    return widest(ratio)


def _load_values(reader: _Reader, path: str, data: Any) -> dict[str, tuple[Any, ...]]:
    values: dict[str, tuple[Any, ...]] = {}
    for key, allowed in reader.mapping(path, data).items():
        if not isinstance(allowed, list) or not allowed:
            reader.problem(f"{path}.{key}", "expected a non-empty list of allowed values")
            continue
        if key == "output_format":
            # Kept in the spelling requests are validated into (jpg -> jpeg), so both spellings match.
            canonical = [canonical_format(item) if isinstance(item, str) else None for item in allowed]
            for index, item in enumerate(allowed):
                if canonical[index] is None:
                    reader.problem(f"{path}.{key}[{index}]", f"{item!r} is not an output format (png, jpeg, webp)")
            allowed = list(dict.fromkeys(item for item in canonical if item is not None))
        values[key] = tuple(allowed)
    return values


def _load_upstream(reader: _Reader, path: str, value: Any, channels: list[str]) -> tuple[str | None, dict[str, str]]:
    """`upstream_model: name`, or `{channel: name, ...}` for an alias served under other names elsewhere."""
    if value is None:
        return None, {}
    if not isinstance(value, dict):
        return reader.string(path, value)[0] or None, {}
    per_channel: dict[str, str] = {}
    for channel, name in reader.mapping(path, value).items():
        if channel not in channels:
            reader.problem(f"{path}.{channel}", f"'{channel}' is not one of this model's channels")
        per_channel[channel] = reader.string(f"{path}.{channel}", name)[0]
    return None, per_channel


def _load_translation(reader: _Reader, path: str, raw: Mapping[str, Any]) -> Translation:
    values: dict[str, dict[Any, Any]] = {}
    for key, mapping in reader.mapping(f"{path}.translate", raw.get("translate")).items():
        if not isinstance(mapping, dict):
            reader.problem(f"{path}.translate.{key}", "expected a mapping of values")
            continue
        values[key] = dict(mapping)
    sizes = _load_sizes(reader, f"{path}.upstream_sizes", raw.get("upstream_sizes")) or ()
    parsed = tuple(size for text in sizes if (size := parse_size(text)) is not None)
    multiple = raw.get("upstream_size_multiple")
    if multiple is not None:
        multiple = _integer(reader, path, raw, "upstream_size_multiple", 16, 1)
    suffixes: dict[str, dict[Any, str]] = {}
    for key, texts in reader.mapping(f"{path}.prompt_suffix", raw.get("prompt_suffix")).items():
        if not isinstance(texts, dict) or not all(isinstance(text, str) for text in texts.values()):
            reader.problem(f"{path}.prompt_suffix.{key}", "expected a mapping of values to suffix texts")
            continue
        suffixes[key] = dict(texts)
    revised = raw.get("revised_prompt", UPSTREAM)
    if revised not in (UPSTREAM, ORIGINAL):
        reader.problem(f"{path}.revised_prompt", f"expected '{UPSTREAM}' or '{ORIGINAL}', got {revised!r}")
    return Translation(
        values=MappingProxyType(values),
        upstream_sizes=parsed,
        size_multiple=multiple,
        prompt_suffix=MappingProxyType(suffixes),
        revised_prompt=str(revised),
    )


def _load_model(reader: _Reader, pattern: str, data: Any, channels: Mapping[str, Channel | None]) -> ModelRule | None:
    path = f"models.{pattern}"
    raw = reader.mapping(path, data, _MODEL_KEYS)
    names = reader.string_list(f"{path}.channels", raw.get("channels"))
    if not names:
        reader.problem(f"{path}.channels", "a model needs at least one channel")
    for index, name in enumerate(names):
        if name not in channels:
            reader.problem(f"{path}.channels[{index}]", f"unknown channel '{name}' (known: {', '.join(sorted(channels))})")
    defaults = _load_defaults(reader, f"{path}.defaults", raw.get("defaults"))
    sizes = _load_sizes(reader, f"{path}.sizes", raw.get("sizes"))
    if sizes is not None and "size" in defaults and defaults["size"] not in sizes:
        reader.problem(f"{path}.defaults.size", f"'{defaults['size']}' is not one of the model's sizes")
    size_rules = _load_size_rules(reader, f"{path}.size_rules", raw.get("size_rules"))
    if size_rules is not None and sizes is not None:
        # Two sources of truth would disagree sooner or later: a model says one or the other.
        reader.problem(f"{path}.size_rules", "a model takes `sizes` or `size_rules`, not both")
    elif size_rules is not None and "size" in defaults and (broken := size_problem(defaults["size"], size_rules)):
        reader.problem(f"{path}.defaults.size", f"'{defaults['size']}' breaks the model's size_rules: {broken}")
    passthrough = frozenset(reader.string_list(f"{path}.passthrough", raw.get("passthrough")))
    translation = _load_translation(reader, path, raw)
    values = _load_values(reader, f"{path}.values", raw.get("values"))
    _check_defaults(reader, path, defaults, passthrough | translation.folded, values, translation.values)
    max_n = reader.number(f"{path}.max_n", raw.get("max_n", DEFAULT_MAX_N), minimum=1, integer=True)
    upstream, per_channel = _load_upstream(reader, f"{path}.upstream_model", raw.get("upstream_model"), names)
    return ModelRule(
        pattern=pattern,
        channels=tuple(names),
        upstream_model=upstream or None,
        upstream_models=MappingProxyType(per_channel),
        translation=translation,
        defaults=MappingProxyType(defaults),
        sizes=sizes,
        size_rules=size_rules,
        max_n=int(max_n or DEFAULT_MAX_N),
        passthrough=passthrough,
        values=MappingProxyType(values),
        price=_load_price(reader, f"{path}.price", raw["price"]) if "price" in raw else None,
    )


def _check_defaults(
    reader: _Reader, path: str, defaults: Mapping[str, Any], sent: frozenset[str], values: Mapping[str, tuple[Any, ...]],
    translated: Mapping[str, Any],
) -> None:
    """A default must reach the upstream (`sent`: passthrough and folded fields) and be one of the model's values;
    so must a field the model's values or translation name (a misspelt one would constrain nothing)."""
    known = ALWAYS_FORWARDED | PROXY_FIELDS | FORMAT_FIELDS | sent
    for section, keys in (("defaults", defaults), ("values", values), ("translate", translated)):
        for key in keys:
            if key not in known:
                reader.problem(f"{path}.{section}.{key}", f"'{key}' is never sent upstream: add it to passthrough")
    for key, allowed in values.items():
        if key in defaults and defaults[key] not in allowed:
            reader.problem(f"{path}.defaults.{key}", f"'{defaults[key]}' is not one of the model's values for {key}")


def _load_price(reader: _Reader, path: str, data: Any) -> Price | None:
    try:
        return parse_price(data)
    except PriceError as error:
        reader.problem(f"{path}.{error.path}" if error.path else path, str(error))
        return None


def load_rules(data: Any, env: Mapping[str, str], schemas: Mapping[str, ChannelSchema]) -> Rules:
    """Validate a decoded rules document; raises RulesError listing every problem with its path."""
    reader = _Reader(env)
    top = reader.mapping("", data, _TOP_KEYS)
    server = _load_server(reader, top.get("server"))
    if server.database.startswith("postgresql://") and server.state == "memory":
        # A shared database suggests replicas; tasks kept there without Redis would be failed as "interrupted"
        # by any replica's restart, since a starting process takes every running task for its own.
        reader.warnings.append("server.database is PostgreSQL but server.state is memory: replicas sharing the "
                               "database need server.state: redis://... (async tasks, limits, budgets)")
    parsed = {
        name: _load_channel(reader, name, value, schemas)
        for name, value in reader.mapping("channels", top.get("channels")).items()
    }
    models = [
        rule
        for pattern, value in reader.mapping("models", top.get("models")).items()
        if (rule := _load_model(reader, pattern, value, parsed)) is not None
    ]
    default_channel = reader.string("default_channel", top["default_channel"])[0] if top.get("default_channel") else None
    if default_channel is not None and default_channel not in parsed:
        reader.problem("default_channel", f"unknown channel '{default_channel}' (known: {', '.join(sorted(parsed))})")
    if reader.problems:
        raise RulesError(reader.problems)
    return Rules(
        server=server,
        channels=MappingProxyType({name: channel for name, channel in parsed.items() if channel is not None}),
        models=tuple(models),
        default_channel=default_channel,
        warnings=tuple(reader.warnings),
    )


def parse_rules(text: str, env: Mapping[str, str], schemas: Mapping[str, ChannelSchema]) -> Rules:
    """Rules from YAML text. Interpolation happens after parsing, so a variable can never inject YAML."""
    try:
        data = rules_yaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RulesError([RuleProblem(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from None
    if data is None:
        raise RulesError([RuleProblem("", "the rules file is empty")])
    return load_rules(data, env, schemas)


def iter_usable(rules: Rules, rule: ModelRule) -> Iterator[Channel]:
    """The model's channels in failover order, skipping those whose key is not set."""
    for name in rule.channels:
        channel = rules.channels[name]
        if channel.usable:
            yield channel
