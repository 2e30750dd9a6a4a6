"""`python -m services.keys`: run the keys step's consumer."""

from services.worker import run_worker

if __name__ == "__main__":
    run_worker("keys")
