"""The two registry adapters: ``catalog`` (control-plane table) and ``http`` (the service's API).

HTTP contract (each service): ``PUT {base_url}/tenants/{tenant_id}`` with a JSON body
``{"project_id", "region", "database", "schema_name", "bucket_name"?}``; 200 or 201 with ``{"endpoint": str,
"bucket_name": str | null}``; idempotent by tenant id. ``GET`` the same URL answers 200
with the same body, or 404. ``DELETE`` the same URL removes the registration: any 2xx, and
404 (already gone), mean done. ``GET {base_url}/tenants`` answers 200 with a JSON array of
every registered tenant id (strings). 5xx, 429 and timeouts are retryable; other 4xx are not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from sqlalchemy import Engine, text

from services.ports import Registered, TenantListingError
from shared.classify import classify
from shared.domain.errors import ErrorType, ProvisioningError


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

    def deregister(self, service: str, tenant_id: str) -> None:
        """The tenant's row for ``service`` deleted; no row is fine."""
        with self.engine.begin() as conn:
            conn.execute(
                text("DELETE FROM service_registrations WHERE service = :service AND tenant_id = :tenant"),
                {"service": service, "tenant": tenant_id},
            )

    def list_tenants(self, service: str) -> frozenset[str]:
        """Every tenant with a row for ``service``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT tenant_id FROM service_registrations WHERE service = :service"),
                {"service": service},
            )
            return frozenset(str(r.tenant_id) for r in rows)


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

    def deregister(self, service: str, tenant_id: str) -> None:
        """``DELETE`` the registration: 2xx or 404 is done; errors as ``register`` raises them
        (a timeout propagates as httpx's, which ``classify`` makes a retryable TIMEOUT)."""
        response = self.client.delete(self._url(service, tenant_id))
        if response.status_code == 404:
            return
        _raise_for(service, response)

    def list_tenants(self, service: str) -> frozenset[str]:
        """``GET {base_url}/tenants``: 200 with a JSON array of tenant ids (strings). Anything
        else — an error status, no answer, another shape — raises TenantListingError."""
        url = f"{self.base_urls[service].rstrip('/')}/tenants"
        try:
            response = self.client.get(url)
        except httpx.TransportError as exc:
            cause = classify(exc)
            raise TenantListingError(
                cause.error_type,
                f"{service} service cannot list its tenants: {cause.message}",
                details={"service": service, **cause.details},
            ) from exc
        try:
            _raise_for(service, response)
        except ProvisioningError as exc:
            raise TenantListingError(
                exc.error_type,
                f"{service} service cannot list its tenants: {exc.message}",
                details=exc.details,
                retryable=exc.retryable,
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, list) or not all(isinstance(t, str) for t in body):
            raise TenantListingError(
                ErrorType.SERVICE_REGISTRATION_FAILED,
                f"{service} service answered its tenant list without a JSON array of tenant ids",
                details={
                    "service": service,
                    "status_code": response.status_code,
                    "body": response.text[:200],
                },
                retryable=False,
            )
        return frozenset(body)


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
