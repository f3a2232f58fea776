"""The one typed settings class of the platform.

Every knob is an environment variable with the ``KPI_`` prefix (``MLFLOW_TRACKING_URI`` and the AWS
variables keep their usual names). Importing this module has no side effects: nothing is created,
nothing is connected; call :func:`get_settings` where a value is needed.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kpi.redaction import SecretUrl, reveal

PLACEHOLDER_SECRETS = {"changeme", "change-me", "password", "secret", "minioadmin", "admin"}


class Settings(BaseSettings):
    """Runtime configuration; the only difference between a laptop and a cluster."""

    # hide_input_in_errors: a validation error would otherwise print the whole input, secrets included
    model_config = SettingsConfigDict(env_prefix="KPI_", extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True)

    env: Literal["dev", "test", "prod"] = Field("dev", description="Deployment environment.")
    home: Path = Field(Path(".kpi"), description="Local state of the embedded mode (Postgres, MLflow, storage).")

    # --- stores --------------------------------------------------------------------------------------
    database_url: SecretUrl | None = Field(
        None, description="Warehouse URL (postgresql://user:password@host:port/db); shown with its password"
                          " redacted, read it with kpi.db.database_url(). Unset: demo and tests start an embedded"
                          " Postgres.",
    )
    storage_url: str | None = Field(
        None, description="Object storage root: file:///path or s3://bucket/prefix. Unset: <home>/storage."
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, SeaweedFS); unset for AWS.")
    # the key id is half of a credential pair (and often a user name on MinIO): kept out of output too
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"), description="S3 access key id (secret)."
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"), description="S3 secret key (secret)."
    )
    mlflow_tracking_uri: SecretUrl | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "KPI_MLFLOW_TRACKING_URI"),
        description="MLflow tracking server or store (a password in it is redacted when shown). Unset: sqlite"
                    " store under <home>.",
    )
    sql_dir: Path | None = Field(None, description="Folder of the bootstrap DDL; unset: the repository's sql/.")

    # --- crypto --------------------------------------------------------------------------------------
    crypto_start_date: dt.date = Field(
        dt.date(2026, 1, 1),
        description="First day the crypto_events DAG processes (its first run's logical date; that run fires at"
                    " 00:00 UTC the day after), which catches up from there (set it to the day your extracts"
                    " begin before unpausing the DAG on a cluster).",
    )
    crypto_window_days: int = Field(5, ge=1, le=60, description="Days in the rolling window [D-(n-1), D].")
    crypto_reject_threshold: float = Field(
        0.05, ge=0.0, le=1.0, description="Largest share of rejected rows in a window that still publishes."
    )
    crypto_max_deactivation_share: float = Field(
        0.2, ge=0.0, le=1.0,
        description="Largest share of the window's active prod keys one run may deactivate; a run that would"
                    " deactivate more (a truncated extract, most likely) fails the gate and publishes nothing.",
    )
    crypto_orphan_minutes: int = Field(
        60, ge=1,
        description="A run driven step by step (the DAG) that no step touched for this long is abandoned: the next"
                    " stage marks it failed and frees its staging rows.",
    )
    crypto_allowed_sites: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ARGENTINA", "BRASIL", "MEXICO", "CHILE", "COLOMBIA", "URUGUAY"],
        description="Sites accepted by validation.",
    )
    crypto_allowed_cryptos: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTC", "ETH", "USDT", "USDC", "SOL", "ADA", "XRP", "DOGE"],
        description="Crypto codes accepted by validation.",
    )

    # --- churn ---------------------------------------------------------------------------------------
    spark_backend: Literal["local", "kubernetes"] = Field(
        "local", description="local: spark-submit with a local master; kubernetes: a SparkApplication."
    )
    spark_master: str = Field("local[2]", description="Master URL for the local backend.")
    spark_namespace: str = Field("kpi", description="Namespace of SparkApplications (kubernetes backend).")
    spark_image: str = Field("kpi-spark:local", description="Image of the Spark driver and executors.")
    churn_model_name: str = Field("churn-model", description="Registered model name.")
    churn_champion_alias: str = Field("champion", description="Alias of the serving model version.")
    churn_promotion_margin: float = Field(
        0.005, ge=0.0, description="AUC a candidate must gain over the champion to be promoted."
    )
    churn_search_trials: int = Field(12, ge=1, description="Hyper-parameter search trials per training run.")
    churn_search_seconds: int = Field(
        150, ge=0, description="Time budget of the search in seconds: no trial starts that would end after it"
        " if it lasted as long as the longest trial so far (at least one runs). 0: no budget, always run"
        " KPI_CHURN_SEARCH_TRIALS trials.",
    )
    churn_model_families: Annotated[list[Literal["logistic_regression", "gbt"]], NoDecode] = Field(
        default_factory=lambda: ["logistic_regression", "gbt"], min_length=1,
        description="Model families the search chooses among (comma-separated): logistic_regression, gbt.",
    )
    churn_promote_incomparable: bool = Field(
        False,
        description="Promote a candidate that passes its guardrails when the champion cannot be scored on the "
        "candidate's holdout (missing features, NaN scores, unreadable model); by default the champion stays.",
    )
    churn_min_auc: float = Field(0.6, ge=0.0, le=1.0, description="Guardrail: lowest holdout AUC a champion may have.")
    churn_max_calibration_error: float = Field(
        0.1, ge=0.0, le=1.0, description="Guardrail: largest expected calibration error (ECE) a champion may have."
    )
    churn_seed: int = Field(42, description="Seed of splits and the hyper-parameter search.")
    churn_drift_threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of drifted features that triggers retraining."
    )
    churn_data_url: str | None = Field(None, description="Where the five churn source CSVs live.")
    churn_max_bad_row_share: float = Field(
        0.01, ge=0.0, le=1.0,
        description="Largest share of a churn source file's rows that may break a validation rule (they are"
                    " quarantined) before training, scoring and drift refuse the sources.",
    )
    # --- churn operations (drift, watchdog, Spark submission) ----------------------------------------------
    churn_drift_engine: Literal["auto", "pandas", "spark"] = Field(
        "auto", description="How drift builds current features: auto (pandas for small sources), pandas, spark."
    )
    spark_service_account: str = Field("kpi-spark", description="Service account of the Spark driver.")
    spark_main_application_file: str = Field(
        "local:///opt/kpi/pipelines/kpi/churn/job.py", description="The training job inside the Spark image."
    )
    spark_version: str | None = Field(None, description="sparkVersion of the SparkApplication; unset: pyspark's.")
    spark_driver_memory: str = Field("1g", description="Driver memory (kubernetes backend).")
    spark_executor_memory: str = Field("1g", description="Executor memory (kubernetes backend).")
    spark_executor_instances: int = Field(1, ge=1, description="Executors (kubernetes backend).")
    spark_driver_cores_request: str = Field(
        "400m", pattern=r"^[0-9.]+m?$", description="CPU the driver pod requests (Kubernetes quantity)."
    )
    spark_executor_cores_request: str = Field(
        "500m", pattern=r"^[0-9.]+m?$", description="CPU each executor pod requests (Kubernetes quantity)."
    )
    spark_memory_overhead: str = Field(
        "512m", pattern=r"^[0-9]+[kmgt]?$", description="Off-heap memory of each Spark pod (pod = heap + this)."
    )
    spark_s3_secret: str = Field(
        "kpi-s3-credentials", description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for Spark pods."
    )
    spark_database_secret: str = Field(
        "kpi-database", description="Secret whose key `url` is KPI_DATABASE_URL for Spark pods."
    )
    spark_kubernetes_conn_id: str = Field(
        "kubernetes_default", description="Airflow connection of SparkKubernetesOperator (in-cluster by default)."
    )

    # --- churn serving: the scoring API and the daily scores --------------------------------------------
    churn_serve_champion_ttl_seconds: float = Field(
        30, gt=0, description="How often the scoring API (`kpi churn serve`) re-reads the champion alias: a"
                              " promotion is served within this many seconds, without a restart.",
    )
    churn_serve_top_k: int = Field(
        5, ge=0, le=100, description="SHAP contributions per prediction the scoring API returns when a request"
                                     " does not say (0: none).",
    )
    churn_serve_max_users: int = Field(
        10_000, ge=1, description="Most users one POST /score may carry; a bigger request is refused (413).",
    )
    churn_scoring_engine: Literal["auto", "pandas", "spark"] = Field(
        "auto", description="How the daily churn scoring (churn_scoring DAG) builds features: auto (pandas for"
                            " small sources, as drift does), pandas, spark.",
    )

    # --- dashboard -----------------------------------------------------------------------------------
    dashboard_champion_ttl_seconds: int = Field(
        30, ge=1, description="How long the dashboard trusts its last read of the champion alias."
    )
    dashboard_connect_timeout_seconds: float = Field(
        3.0, gt=0, description="Time the dashboard waits for a store before saying it is unreachable."
    )
    dashboard_max_upload_mb: int = Field(
        50, ge=1, le=1024,
        description="Largest CSV the batch page accepts, per file, in MB: checked by the page and passed to"
                    " Streamlit as server.maxUploadSize (the dashboard chart sets both from one value).",
    )
    dashboard_max_upload_rows: int = Field(
        1_000_000, ge=1, description="Most data rows the batch page reads from one uploaded file."
    )

    @field_validator("crypto_allowed_sites", "crypto_allowed_cryptos", "churn_model_families", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                import json

                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _no_placeholder_secrets_outside_dev(self) -> "Settings":
        if self.env == "prod":
            secret = reveal(self.aws_secret_access_key)
            if secret is not None and secret.lower() in PLACEHOLDER_SECRETS:
                raise ValueError("AWS_SECRET_ACCESS_KEY is a placeholder; set a real secret in prod")
            if self.database_url is None:
                raise ValueError("KPI_DATABASE_URL is required when KPI_ENV=prod")
        return self

    # --- derived values (pure; nothing is created here) ------------------------------------------------
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_storage_url(self) -> str:
        return (self.storage_url or (self.home_dir / "storage").as_uri()).rstrip("/")

    @property
    def resolved_mlflow_uri(self) -> str:
        """The tracking URI to connect with (credentials included): print :func:`kpi.redaction.redact_url` of it."""
        return reveal(self.mlflow_tracking_uri) or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def resolved_sql_dir(self) -> Path:
        if self.sql_dir is not None:
            return self.sql_dir
        return Path(__file__).resolve().parents[2] / "sql"

    def storage_options(self, url: str | None = None) -> dict:
        """fsspec options for ``url`` (default: the storage root): S3 endpoint and keys when set."""
        if not (url or self.resolved_storage_url).startswith("s3://"):
            return {}
        opts: dict = {}
        if self.s3_endpoint_url:
            opts["client_kwargs"] = {"endpoint_url": self.s3_endpoint_url}
        if self.aws_access_key_id:
            opts["key"] = reveal(self.aws_access_key_id)
            opts["secret"] = reveal(self.aws_secret_access_key)
        return opts

    def redact(self, text: str) -> str:
        """``text`` with every secret of these settings and of the environment replaced by ``***``."""
        from kpi.redaction import scrub, secret_values

        return scrub(text, secret_values(extra=[self.database_url, self.mlflow_tracking_uri,
                                                self.aws_secret_access_key]))

    def store_environment(self) -> dict[str, str]:
        """Environment variables that point a child process at the same stores, credentials included.

        For subprocesses only (``streamlit run``, ``spark-submit``): never print or log the result.
        """
        env = {
            "KPI_HOME": str(self.home_dir),
            "KPI_STORAGE_URL": self.resolved_storage_url,
            "MLFLOW_TRACKING_URI": self.resolved_mlflow_uri,
        }
        optional = {
            "KPI_DATABASE_URL": reveal(self.database_url),
            "KPI_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": reveal(self.aws_access_key_id),
            "AWS_SECRET_ACCESS_KEY": reveal(self.aws_secret_access_key),
        }
        env.update({k: v for k, v in optional.items() if v})
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()


def reload_settings() -> Settings:
    """Forget cached settings (tests and the demo change the environment)."""
    get_settings.cache_clear()
    return get_settings()
