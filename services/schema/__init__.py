"""The schema step: handler.py is its logic, adapters.py its side effects."""
