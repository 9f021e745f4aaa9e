"""One typed settings object, read from the environment (``SIBIFANG_*``)."""

from __future__ import annotations

import os
import secrets
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# China keeps one time zone. Every stored time is naive local time in it (schemas.models), so it
# is fixed here, once, and not a setting: a changed zone would shift every stored time.
LOCAL_TZ_NAME = "Asia/Shanghai"
LOCAL_TZ = ZoneInfo(LOCAL_TZ_NAME)


# Upper bound of the silence alarm's budget (needless alerts a household-month): past it the
# alarm would fire on every quiet evening.
SILENCE_BUDGET_MAX = 30.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIBIFANG_", extra="ignore")

    # Application database: a SQLite file under the working directory by default (``out/``, where
    # `make demo` writes everything, so `sibifang stats` afterwards reads what the demo did);
    # any ``postgresql+psycopg://`` URL works the same.
    # repr=False here and below: these may carry a password or a key (user:pw@host, ?key=,
    # an Authorization header), and a settings object ends up in tracebacks and debug logs.
    database_url: str = Field("sqlite:///out/sibifang.db", repr=False)
    # Columnar store for meter readings (Parquet partitions) and other bulk files.
    data_dir: Path = Path("data")
    # Where reports, maps, exports and quarantine files are written.
    out_dir: Path = Path("out")
    # File drops that the scheduled flows pick up (villages' visit sheets, meter exports).
    inbox_dir: Path = Path("data/inbox")
    # A dropped file is read once it has not changed for this long (it may still be being copied).
    inbox_settle_seconds: float = 30.0
    # A readings file waits this long for the readings store while a pull (or another file)
    # holds it, then fails naming the lock and stays in the inbox for the next run
    # (``ReadingStore.hold_for_batch``). A pull that pages slowly through a patient platform
    # holds it for minutes; a file stuck longer is better tried again by the next run.
    readings_lock_timeout_seconds: float = Field(600.0, ge=0)

    # Alerts: when set, every alert goes to this one generic webhook (trials, tests).
    alert_webhook_url: str | None = Field(None, repr=False)
    alert_webhook_secret: SecretStr | None = None
    alert_max_attempts: int = 5
    # Signing secrets of the group robots (DingTalk "加签", Feishu "签名校验"); SMTP for e-mail.
    dingtalk_secret: SecretStr | None = None
    feishu_secret: SecretStr | None = None
    # Per-robot signing secrets, JSON {"<robot webhook URL>": "<secret>", ...}; a robot not
    # listed falls back to the single secret above.
    robot_secrets: SecretStr | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "sibifang@localhost"
    # SMS gateway described by a template (see sibifang.channels.SmsChannel): the body is JSON with
    # {phone} {text} {secret} placeholders; success read at a dotted path of the answer.
    sms_gateway_url: str | None = Field(None, repr=False)
    sms_method: str = "POST"
    sms_body_template: str = '{"phone": "{phone}", "text": "{text}"}'
    sms_headers: str = Field("{}", repr=False)
    sms_success_path: str | None = "code"
    sms_api_key: SecretStr | None = None
    # Dispatch concurrency (threads sending at once) and channel rate limits on/off.
    dispatch_workers: int = 8
    rate_limits: bool = True
    alert_timeout_seconds: float = 5.0
    # Acknowledgement links: signed, expiring tokens served by ``sibifang serve``. Anyone holding
    # the key can forge a link that closes an alert, so there is no default key: unset, each
    # installation makes its own random one (see ``ack_signing_key``); a cluster sets one
    # shared SIBIFANG_ACK_SECRET for all its workers.
    ack_secret: SecretStr | None = None
    ack_base_url: str = "http://127.0.0.1:8765"
    ack_token_ttl_hours: int = 72
    escalate_after_minutes: int = 30
    quiet_hours_start: int = 22
    quiet_hours_end: int = 7

    # Meter pull connector (paged JSON API).
    meter_api_url: str | None = Field(None, repr=False)
    meter_api_token: SecretStr | None = None

    @field_validator("meter_api_token", mode="before")
    @classmethod
    def _strip_meter_api_token(cls, value):
        # A token pasted into an env file or a secret block often ends with a newline, which no
        # HTTP header may hold. Only stripped here, never refused: a validation error would print
        # the value. sibifang.meter_api refuses one with whitespace inside, naming the variable.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return value.strip() or None if isinstance(value, str) else value

    # The silence alarm's budget (静默告警预算): the needless alerts a household-month it may
    # spend to catch a resident who stopped being active (DetectorConfig.false_alarms_per_month).
    # Higher is sooner and noisier; on the three real households 0.15 gives a median of 10–11 h
    # at 0.89 alerts a household-month of every kind, 1.2 gives 8 h at 1.99
    # (benchmarks/evaluate_detectors.py --frontier). A changed value fits the day's routine
    # profiles again (it is part of their fingerprint).
    silence_alarms_per_month: float = Field(0.15, gt=0, le=SILENCE_BUDGET_MAX)

    # Visit cadence rules a supervisor can read and edit (TOML); packaged default if unset.
    cadence_file: Path | None = None
    default_capacity: int = Field(10, description="families per cadre (每名干部联系约10户)")

    def detector_config(self, silence_budget: float | None = None):
        """The meter detectors' settings for this installation: the defaults, with the silence
        alarm's budget (``silence_budget`` overrides the setting for one run)."""
        from sibifang.detectors import DetectorConfig

        budget = self.silence_alarms_per_month if silence_budget is None else silence_budget
        return DetectorConfig(false_alarms_per_month=budget)

    def ack_signing_key(self) -> str:
        """The key that signs acknowledgement links (确认链接签名密钥).

        ``SIBIFANG_ACK_SECRET`` when set; otherwise a random key made once for this
        installation and kept in ``data_dir/ack_secret.key`` (owner-only), so a county office
        on one machine needs no setting and its links survive a restart."""
        if self.ack_secret is not None:
            key = self.ack_secret.get_secret_value()
            if len(key) < MIN_ACK_SECRET_LENGTH:
                # Checked here, not by a pydantic validator: its error would print the value.
                raise ValueError(f"SIBIFANG_ACK_SECRET must be at least {MIN_ACK_SECRET_LENGTH} characters "
                                 "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
            return key
        return _installation_key(Path(self.data_dir) / "ack_secret.key")


MIN_ACK_SECRET_LENGTH = 16


def _installation_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="ascii").strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_urlsafe(32))
    try:
        # link() fails if another process got there first: both then use the file's key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_text(encoding="ascii").strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def local_now() -> datetime:
    """Now, as the naive local time (Asia/Shanghai) that the database and every schedule use,
    whatever zone the host's clock is set to (servers often run on UTC)."""
    return datetime.now(LOCAL_TZ).replace(tzinfo=None)


def local_today() -> date:
    return local_now().date()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
