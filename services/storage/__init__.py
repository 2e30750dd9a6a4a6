"""The storage step: handler.py is its logic; its adapters (catalog, http) are in services/registration."""
