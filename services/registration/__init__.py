"""Tenant registration with the platform services (auth, realtime, storage)."""
