"""Typed configuration of the Ray Serve teacher (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1, description="Serve replicas, each holding a full teacher.")
    num_cpus_per_replica: float = Field(0.5, ge=0.0)
    num_gpus_per_replica: float = Field(0.0, ge=0.0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per replica, e.g. {teacher: 1} to run only on nodes that advertise them.",
    )
    num_threads: int = Field(2, ge=1, description="torch intra-op threads per replica (CPU).")
    dtype: Literal["float32", "bfloat16"] = "float32"
    max_batch_size: int = Field(16, ge=1, description="@serve.batch: sequences scored in one forward.")
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    max_seq_len: int = Field(1024, ge=2, description="Longest prompt + response accepted.")
    http_host: str = Field("127.0.0.1", description="Serve HTTP bind address; loopback unless you mean it.")
    http_port: int = Field(8321, ge=1, le=65535)
    route_prefix: str = Field("/teacher", pattern=r"^/")
    app_name: str = "teacher"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Serve logs; INFO logs every call."
    )
