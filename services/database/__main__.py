"""`python -m services.database`: run the database step's consumer."""

from services.worker import run_worker

if __name__ == "__main__":
    run_worker("database")
