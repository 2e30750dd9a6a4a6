"""`python -m services.verify`: run the verify step's consumer."""

from services.worker import run_worker

if __name__ == "__main__":
    run_worker("verify")
