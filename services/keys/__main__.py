"""`python -m services.keys`: run the keys step's consumer."""

from services.worker import main

if __name__ == "__main__":
    main("keys")
