"""The two registry adapters: ``catalog`` (control-plane table) and ``http`` (the service's API).

HTTP contract (each service): ``PUT {base_url}/tenants/{tenant_id}`` with a JSON body
``{"project_id", "region", "database", "schema_name", "bucket_name"?}``; 200 or 201 with ``{"endpoint": str,
"bucket_name": str | null}``; idempotent by tenant id. ``GET`` the same URL answers 200
with the same body, or 404. 5xx and timeouts are retryable; 4xx are not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from sqlalchemy import Engine, text

from services.ports import Registered
from shared.errors import ErrorType, ProvisioningError


class CatalogRegistry:
    """Registrations kept in the control-plane database: the local default."""

    def __init__(self, engine: Engine, endpoints: Mapping[str, str]) -> None:
        self.engine = engine
        self.endpoints = dict(endpoints)

    def register(self, service: str, tenant_id: str, spec: Mapping[str, Any]) -> Registered:
        endpoint = f"{self.endpoints[service].rstrip('/')}/{tenant_id}"
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    """
                    INSERT INTO service_registrations
                        (service, tenant_id, project_id, endpoint, bucket_name, spec)
                    VALUES (:service, :tenant, :project, :endpoint, :bucket, CAST(:spec AS jsonb))
                    ON CONFLICT (service, tenant_id) DO UPDATE
                        SET spec = EXCLUDED.spec, bucket_name = EXCLUDED.bucket_name, updated_at = now()
                    RETURNING endpoint, bucket_name
                    """
                ),
                {
                    "service": service,
                    "tenant": tenant_id,
                    "project": spec.get("project_id", tenant_id),
                    "endpoint": endpoint,
                    "bucket": spec.get("bucket_name"),
                    "spec": json.dumps(dict(spec)),
                },
            ).one()
        return Registered(tenant_id=tenant_id, endpoint=row.endpoint, bucket_name=row.bucket_name)

    def lookup(self, service: str, tenant_id: str) -> Registered | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT endpoint, bucket_name FROM service_registrations "
                    "WHERE service = :service AND tenant_id = :tenant"
                ),
                {"service": service, "tenant": tenant_id},
            ).first()
        return (
            Registered(tenant_id=tenant_id, endpoint=row.endpoint, bucket_name=row.bucket_name)
            if row
            else None
        )


class HttpRegistry:
    """Registrations through each service's HTTP API (one pooled client per process)."""

    def __init__(self, client: httpx.Client, base_urls: Mapping[str, str]) -> None:
        self.client = client
        self.base_urls = dict(base_urls)

    def _url(self, service: str, tenant_id: str) -> str:
        return f"{self.base_urls[service].rstrip('/')}/tenants/{tenant_id}"

    def register(self, service: str, tenant_id: str, spec: Mapping[str, Any]) -> Registered:
        response = self.client.put(self._url(service, tenant_id), json=dict(spec))
        _raise_for(service, response)
        return _registered(service, tenant_id, response)

    def lookup(self, service: str, tenant_id: str) -> Registered | None:
        response = self.client.get(self._url(service, tenant_id))
        if response.status_code == 404:
            return None
        _raise_for(service, response)
        return _registered(service, tenant_id, response)


def _raise_for(service: str, response: httpx.Response) -> None:
    if response.is_success:
        return
    retryable = response.status_code >= 500 or response.status_code == 429
    raise ProvisioningError(
        ErrorType.SERVICE_REGISTRATION_FAILED,
        f"{service} service answered HTTP {response.status_code}",
        details={"service": service, "status_code": response.status_code, "body": response.text[:200]},
        retryable=retryable,
    )


def _registered(service: str, tenant_id: str, response: httpx.Response) -> Registered:
    try:
        body = response.json()
        return Registered(
            tenant_id=tenant_id, endpoint=str(body["endpoint"]), bucket_name=body.get("bucket_name")
        )
    except (ValueError, KeyError, TypeError):
        raise ProvisioningError(
            ErrorType.SERVICE_REGISTRATION_FAILED,
            f"{service} service answered without an endpoint",
            details={"service": service, "status_code": response.status_code},
        ) from None
