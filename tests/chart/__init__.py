"""The Helm chart's tests (services/chart)."""
