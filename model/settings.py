"""One settings object for both processes: flask_config.yaml, overridden by SCRIPTORIUM_* env vars.

Imported by the HTTP process and the worker alike, so it must stay light (no torch).
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = Path(os.environ.get("SCRIPTORIUM_CONFIG", PROJECT_ROOT / "flask_config.yaml"))


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 5005
    max_body_bytes: int = 50 * 1024 * 1024
    # The address clients use, for absolute URLs in results (IIIF annotation ids); never taken
    # from a request's Host header, which any caller can set. Empty: http://host:port.
    public_url: str = ""

    def public_base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class RedisSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 6390
    db: int = 0
    # Normally read from <data_dir>/secrets/redis_password (generated at setup).
    password: str | None = None
    # How long a worker's calls to Redis keep retrying while Redis is unreachable (a restart);
    # past that the task in hand is left to be requeued once Redis is back, never failed.
    outage_patience_s: float = Field(default=20, ge=0, le=300)


class WorkerSettings(BaseModel):
    # How this host's workers name themselves in heartbeats, /readyz, GET /models and results'
    # provenance; empty: the host name.
    name: str = ""
    # Tasks one worker runs at once: Celery prefork children, each with the models loaded
    # (README, "Tasks run side by side"). 4: a task waiting on a slow library server leaves the
    # CPU (or GPU) to the others, and a small task never waits behind a big one.
    concurrency: int = Field(default=4, ge=1)
    # Tasks of one key running at once, at most, on every worker together (0: no cap; a key's
    # own `keys create --max-running` overrides it). Below concurrency, a slot is always left
    # for other keys: one key's tasks stuck on a trickling host cannot hold every worker.
    key_running_max: int = Field(default=3, ge=0)
    batch_size: int = 4
    # Redis re-delivers an unacknowledged task this long after the longest hard time limit.
    visibility_margin_s: int = 60
    # A running task whose worker has not renewed its lease for this long (a host died, a
    # worker was killed whole) is requeued by another worker's reaper (model/lifecycle/attempts.py).
    lost_grace_s: float = 45


class ResultSettings(BaseModel):
    ttl_s: int = 86400
    tombstone_ttl_s: int = 7 * 86400
    # Items a finished task's status shows at most (the first stored); a bigger task's status
    # says how many there are and where the rest is (GET /result/<id>?offset=&limit=).
    status_max_items: int = Field(default=500, ge=1)
    # How often orphaned uploads and stale index entries are purged.
    purge_interval_s: float = 300


class UploadSettings(BaseModel):
    """Uploaded files wait in Redis (any worker host reads them there) until their task ends."""

    # Bytes of uploaded files one task may keep (all its images and manifests); 0: as many as
    # http.max_body_bytes lets through.
    max_total_bytes: int = 0
    # Bytes of uploads all of one key's tasks may keep in Redis at once, and all tasks together:
    # reserved as a task is admitted (429 beyond), given back as it ends.
    max_held_bytes_per_key: int = Field(default=512 * 1024 * 1024, ge=1)
    max_held_bytes_total: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    # How long a task's uploads may wait for a worker, beyond its hard time limit: the TTL of
    # their Redis keys, set again when a worker starts the task.
    queue_wait_s: int = 21600


class JobLimits(BaseModel):
    timeout_default_s: int = 600
    timeout_max_s: int = 3600
    max_images: int = 500


class CancelSettings(BaseModel):
    grace_s: float = 10.0


class ModelSettings(BaseModel):
    dirs: list[str] = ["model/weights", "var/models"]
    default: str = "illustrations-demo"
    # Imported models (model/inference/catalog.py): largest file, and how often a worker checks
    # the catalog for added or removed models.
    max_bytes: int = 209715200
    sync_interval_s: float = 2.0


class InferenceSettings(BaseModel):
    backend: str = "auto"
    # CPU threads for inference in each pool process; 0: the cores shared out among the
    # `worker.concurrency` processes, 2 at least and at most the cores (Settings.inference_threads).
    cpu_threads: int = Field(default=0, ge=0)


class LimitSettings(BaseModel):
    # Per API key (`limits` syntax); a key created with --rate overrides it.
    rate: str = "50/second;3000/minute"
    # Requests whose key is missing, wrong or revoked, per client address (behind the tunnel:
    # all of them together); beyond it they get 429 instead of 401. Valid keys are not affected.
    auth_failures: str = "10/second;200/minute"
    max_queued_total: int = 1000
    max_queued_per_key: int = 200
    max_json_depth: int = 32
    # Largest JSON request body (a parsed body takes ~50x its size in the API process): 413
    # beyond, before it is read. Files go as multipart uploads (http.max_body_bytes).
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)


class CorsSettings(BaseModel):
    origins: list[str] = []


class ShareSettings(BaseModel):
    """Share links to one task's results (model/api/shares.py)."""

    default_ttl_s: int = 86400
    max_ttl_s: int = 7 * 86400
    # Live links at most, per task and per key that made them: 409 beyond (each is a Redis
    # hash, and listing reads every one).
    max_per_task: int = Field(default=20, ge=1)
    max_per_key: int = Field(default=1000, ge=1)
    # Reads through share links (`limits` syntax), per link (as fast as a key's default)
    # and per client address, whatever headers the request carries: 429 beyond. nginx also
    # limits them per address (behind spiped the app sees one address for every client).
    rate: str = "50/second;3000/minute"
    client_rate: str = "100/second;6000/minute"


class ConsoleSettings(BaseModel):
    """The operator page (GET /console)."""

    # A IIIF viewer to open shared manifests in: a URL with {manifest} where the manifest's URL
    # goes (URL-encoded), e.g. a Mirador page of your own; empty: no "open in viewer" link.
    viewer_url: str = ""


class SpipedSettings(BaseModel):
    """The server end of the spiped tunnel the front end reaches the API through."""

    enabled: bool = False
    # Where the encrypted tunnel is accepted (spiped's [address]:port syntax).
    listen: str = "[0.0.0.0]:8025"
    # Where decrypted connections go; empty means nginx's public entry point (http.host:port).
    target: str = ""
    # 32 random bytes shared with the front end; empty means <data_dir>/secrets/spiped.key.
    key_file: str = ""


class RedisTunnelSettings(BaseModel):
    """spiped carrying Redis between the API host and worker hosts (scale-out: README, Deployment).
    Redis itself keeps listening on loopback only, and keeps asking for its password."""

    # API host (role api): the server end accepts the encrypted tunnel here (spiped's
    # [address]:port syntax) and hands connections to Redis on loopback (redis.port).
    listen: str = "[0.0.0.0]:8026"
    # Worker host (role worker): the API host's end, host:port or [address]:port. The client end
    # listens where the worker expects Redis (redis.host:redis.port), so nothing else changes.
    server: str = ""
    # 32 random bytes shared by the API host and its worker hosts (mode 0600); empty means
    # <data_dir>/secrets/redis-tunnel.key. Made on the API host; copied to the worker hosts.
    key_file: str = ""


class FetchSettings(BaseModel):
    connect_timeout_s: float = 5
    read_timeout_s: float = 30
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 178_956_970
    max_redirects: int = 3
    user_agent: str = "Scriptorium/0.1 (+https://github.com/scriptorium; illustration detection)"
    allow: list[str] = []
    # Simultaneous requests to one host from one worker process, at most (be kind to library
    # servers): the limit adapts between 1 and this (model/sources/throttle.py).
    per_host_concurrency: int = 4
    # Where a host's limit starts (again after 5 idle minutes); grows while latency stays flat.
    per_host_start: int = 1
    # Grow only while the host's latency EWMA stays within this fraction over its lowest.
    latency_tolerance: float = 0.5
    retries: int = 2
    # Whole response (connect, headers, body) of one attempt, at most: a server trickling bytes
    # never trips the per-read timeout.
    response_deadline_s: float = 60


class IiifSettings(BaseModel):
    # Nested collections are followed this deep (0: a collection's manifests only).
    max_collection_depth: int = 2
    # Canvases read per task, all manifests together (a whole large book); the rest are left
    # out, counted, and the status warns of them.
    max_canvases: int = 10_000
    # Manifests and collections fetched per task.
    max_manifests: int = 50
    # Cap on one manifest/collection/info.json body (images have fetch.max_bytes).
    max_json_bytes: int = 10 * 1024 * 1024
    # Ground-truth annotations sent inline with an evaluate task (JSON; they are kept in the task
    # record): larger sets go by URL or inside the manifest. Below limits.max_json_body_bytes,
    # which caps the whole request.
    max_inline_annotation_bytes: int = 512 * 1024
    # Parsed info.json descriptions kept in Redis by service id, shared across tasks (0: off).
    info_cache_ttl_s: int = 86_400
    # A detect task keeps each manifest it read up to this size (JSON), to serve it to viewers
    # with the detections attached (GET /result/<id>/iiif/manifest/<m>).
    max_kept_manifest_bytes: int = 4 * 1024 * 1024


class PipelineSettings(BaseModel):
    # Threads downloading and decoding ahead of inference.
    download_threads: int = 4
    # Decoded images waiting for inference, at most (bounds memory).
    prefetch_depth: int = 8
    # Bytes of decoded pixels the decode threads of one worker process hold at once; an image
    # needing more on its own fails as `too_large_to_decode`. 0: no bound.
    decode_budget_bytes: int = 1024 * 1024 * 1024


class CacheSettings(BaseModel):
    # Detections cached by (image bytes sha256, model sha256, params); 0 disables.
    ttl_s: int = 7 * 86400
    max_entries: int = 100_000


class SimilaritySettings(BaseModel):
    # Feature extractor (a model card with task "embed") used when a task names none.
    embed_model: str = "illustrations-demo-backbone"
    # Documents per similarity task (every pair, each with itself, is compared).
    max_documents: int = 10
    # Page features cached by (image sha256, model sha256s, params), like detections; entries
    # are larger (keypoints), so fewer are kept. 0 disables.
    cache_ttl_s: int = 7 * 86400
    cache_max_entries: int = 5000


class TrainingSettings(BaseModel):
    """The train job (model/jobs/train/): its own worker program and queue, so training never
    takes a detection worker's place; route it to a GPU host by running that program there."""

    # Training tasks one host runs at once (the `train-worker` program's Celery children).
    concurrency: int = Field(default=1, ge=1)
    # CPU threads torch may use while training (0: every core of the host).
    cpu_threads: int = Field(default=0, ge=0)
    # Training tasks a key may have queued or running at once.
    max_active_per_key: int = Field(default=1, ge=1)
    # Models a (non-admin) key's training may publish for it alone, and the bytes they may hold
    # in Redis together (weights + ONNX; docs/models.md). Everyone's models count against none.
    max_models_per_key: int = Field(default=10, ge=1)
    max_model_bytes_per_key: int = Field(default=200 * 1024 * 1024, ge=1)
    max_pages: int = Field(default=500, ge=2)
    max_epochs: int = Field(default=300, ge=1)
    # Size of a dataset zip fetched by URL, and of everything inside it once unpacked.
    max_dataset_bytes: int = 200 * 1024 * 1024


class WebhookSettings(BaseModel):
    """Deliveries of task events to `webhook.url` (model/webhooks/), by their own worker program."""

    # A `completed` delivery is retried with exponential backoff (doubling from backoff_initial_s,
    # at most backoff_max_s apart, up to 10% jitter) until this long after the task ended.
    retry_for_s: float = 86_400
    backoff_initial_s: float = 10
    backoff_max_s: float = 3600
    # One attempt, connect to last header byte, at most (the fetch timeouts bound it too).
    timeout_s: float = 10
    # Largest body sent (the event: task id, state, progress, error, links; never the result).
    max_payload_bytes: int = 65_536
    # `progress` events: at most one every progress_interval_s, which may not be set below this.
    min_progress_interval_s: float = 5
    # Processes of the webhooks worker program (prefork).
    concurrency: int = 4
    # Attempts of one key's events in flight at once, at most (and always fewer than
    # `concurrency`): a key whose receiver hangs holds this many processes, never all of them.
    key_in_flight: int = 2
    # A receiver host whose last `breaker_failures` attempts all failed (no answer, 429, 5xx) gets
    # none for `breaker_open_s`; then one attempt probes it (a 2xx closes the breaker again).
    breaker_failures: int = 5
    breaker_open_s: float = 60
    # After `keys webhook-secret NAME --rotate`, deliveries carry a signature with the old secret
    # too for this long, so receivers can switch without losing any.
    rotation_grace_s: float = 86_400


class MetricsSettings(BaseModel):
    """GET /metrics (model/metrics/)."""

    # Distinct hosts named in the fetch metrics' `host` label; later ones count as "other".
    max_hosts: int = 50


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SCRIPTORIUM_",
        env_nested_delimiter="__",
        yaml_file=CONFIG_FILE,
        extra="ignore",
    )

    data_dir: Path = Path("var")
    # What this machine runs (cloudvps_setup.sh --role): "all" (one VM: redis, the worker,
    # gunicorn, nginx, spiped), "api" (the same plus the server end of the Redis tunnel, for
    # worker hosts) or "worker" (the Celery worker only, reaching the API host's Redis through
    # the tunnel's client end).
    role: Literal["all", "api", "worker"] = "all"
    http: HttpSettings = HttpSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    results: ResultSettings = ResultSettings()
    uploads: UploadSettings = UploadSettings()
    # Overrides of job types' own limits (each JobSpec has its defaults).
    jobs: dict[str, JobLimits] = Field(default_factory=dict)
    cancel: CancelSettings = CancelSettings()
    models: ModelSettings = ModelSettings()
    inference: InferenceSettings = InferenceSettings()
    fetch: FetchSettings = FetchSettings()
    iiif: IiifSettings = IiifSettings()
    pipeline: PipelineSettings = PipelineSettings()
    cache: CacheSettings = CacheSettings()
    similarity: SimilaritySettings = SimilaritySettings()
    training: TrainingSettings = TrainingSettings()
    limits: LimitSettings = LimitSettings()
    cors: CorsSettings = CorsSettings()
    share: ShareSettings = ShareSettings()
    console: ConsoleSettings = ConsoleSettings()
    spiped: SpipedSettings = SpipedSettings()
    webhooks: WebhookSettings = WebhookSettings()
    metrics: MetricsSettings = MetricsSettings()
    redis_tunnel: RedisTunnelSettings = RedisTunnelSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the YAML file, which wins over the defaults above.
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    # Derived paths, all under the one data directory.
    @property
    def data_path(self) -> Path:
        return self.data_dir if self.data_dir.is_absolute() else PROJECT_ROOT / self.data_dir

    @property
    def secrets_dir(self) -> Path:
        return self.data_path / "secrets"

    @property
    def model_cache_dir(self) -> Path:
        """Where a worker host keeps the imported models' blobs (model/inference/catalog.py)."""
        return self.data_path / "model-cache"

    @property
    def uploads_dir(self) -> Path:
        """Where releases before uploads moved to Redis kept them (read for tasks queued across
        the upgrade, purged of orphans)."""
        return self.data_path / "uploads"

    @property
    def keys_db(self) -> Path:
        return self.data_path / "keys.sqlite3"

    @property
    def metrics_dir(self) -> Path:
        """prometheus-client's multiprocess files of the HTTP processes (cleaned at start)."""
        return self.run_dir / "metrics"

    @property
    def run_dir(self) -> Path:
        """Sockets, pid files, the rendered nginx.conf."""
        return self.data_path / "run"

    @property
    def spiped_key(self) -> Path:
        return (
            Path(self.spiped.key_file) if self.spiped.key_file else self.secrets_dir / "spiped.key"
        )

    @property
    def spiped_target(self) -> str:
        return self.spiped.target or f"[{self.http.host}]:{self.http.port}"

    @property
    def worker_name(self) -> str:
        return self.worker.name or socket.gethostname()

    @property
    def installation_file(self) -> Path:
        """A random id made once per data dir (`init`): /readyz and the heartbeats carry it, so
        setup can tell its own stack from another one answering on the same port or name."""
        return self.data_path / "installation_id"

    def installation_id(self) -> str:
        return _read_id(self.installation_file)

    @property
    def redis_tunnel_key(self) -> Path:
        key_file = self.redis_tunnel.key_file
        return Path(key_file) if key_file else self.secrets_dir / "redis-tunnel.key"

    @property
    def model_dirs(self) -> list[Path]:
        return [p if (p := Path(d)).is_absolute() else PROJECT_ROOT / p for d in self.models.dirs]

    def inference_threads(self) -> int:
        """CPU threads for inference (ONNX Runtime, torch) in one pool process."""
        if self.inference.cpu_threads > 0:
            return self.inference.cpu_threads
        # Two at least: one thread leaves a lone task at ~80% of its speed, while oversubscribing
        # cost side-by-side tasks nothing measurable with ONNX Runtime, the CPU default (its
        # spin-waiting is off; torch's OpenMP threads may spin: set cpu_threads for torch on CPU).
        cores = available_cores()
        return min(cores, max(2, cores // self.worker.concurrency))

    def redis_password(self) -> str | None:
        if self.redis.password:
            return self.redis.password
        secret = self.secrets_dir / "redis_password"
        return secret.read_text().strip() if secret.exists() else None

    def redis_url(self) -> str:
        password = self.redis_password()
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{self.redis.host}:{self.redis.port}/{self.redis.db}"

    def hard_limit_s(self, timeout_s: float) -> float:
        """The soft limit (timeout_s) lets a job stop cleanly; this hard limit is the fallback."""
        return timeout_s + self.cancel.grace_s

    def upload_cap_bytes(self) -> int:
        """Bytes of uploads one task may keep in Redis."""
        return self.uploads.max_total_bytes or self.http.max_body_bytes

    def upload_ttl_s(self, timeout_s: float) -> int:
        """Lifetime of a task's uploads in Redis: its run plus the wait allowed before it."""
        return int(self.hard_limit_s(timeout_s)) + self.uploads.queue_wait_s


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_IDS: dict[Path, str] = {}


def _read_id(path: Path) -> str:
    """The file's content, read once per process (a missing file is read again next time)."""
    if path not in _IDS:
        try:
            _IDS[path] = path.read_text().strip()
        except OSError:
            return ""
    return _IDS[path]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
