"""`python -m services.storage`: run the storage step's consumer."""

from services.worker import run_worker

if __name__ == "__main__":
    run_worker("storage")
