"""Unit tests: in-memory fakes, no Kafka and no PostgreSQL."""
