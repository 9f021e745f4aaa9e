"""One typed settings object, read from the environment (``SIBIFANG_*``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIBIFANG_", extra="ignore")

    # Application database: a SQLite file under the working directory by default (``out/``, where
    # `make demo` writes everything, so `sibifang stats` afterwards reads what the demo did);
    # any ``postgresql+psycopg://`` URL works the same.
    database_url: str = "sqlite:///out/sibifang.db"
    # Columnar store for meter readings (Parquet partitions) and other bulk files.
    data_dir: Path = Path("data")
    # Where reports, maps, exports and quarantine files are written.
    out_dir: Path = Path("out")
    # File drops that the scheduled flows pick up (villages' visit sheets, meter exports).
    inbox_dir: Path = Path("data/inbox")
    timezone: str = "Asia/Shanghai"

    # Alerts: when set, every alert goes to this one generic webhook (trials, tests).
    alert_webhook_url: str | None = None
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
    sms_gateway_url: str | None = None
    sms_method: str = "POST"
    sms_body_template: str = '{"phone": "{phone}", "text": "{text}"}'
    sms_headers: str = "{}"
    sms_success_path: str | None = "code"
    sms_api_key: SecretStr | None = None
    # Dispatch concurrency (threads sending at once) and channel rate limits on/off.
    dispatch_workers: int = 8
    rate_limits: bool = True
    alert_timeout_seconds: float = 5.0
    # Acknowledgement links: signed, expiring tokens served by ``sibifang serve``.
    ack_secret: SecretStr = SecretStr("change-me-in-production")
    ack_base_url: str = "http://127.0.0.1:8765"
    ack_token_ttl_hours: int = 72
    escalate_after_minutes: int = 30
    quiet_hours_start: int = 22
    quiet_hours_end: int = 7

    # Meter pull connector (paged JSON API).
    meter_api_url: str | None = None
    meter_api_token: SecretStr | None = None

    # Visit cadence rules a supervisor can read and edit (TOML); packaged default if unset.
    cadence_file: Path | None = None
    default_capacity: int = Field(10, description="families per cadre (每名干部联系约10户)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
