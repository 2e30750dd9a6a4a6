"""`python -m services.auth`: run the auth step's consumer."""

from services.worker import run_worker

if __name__ == "__main__":
    run_worker("auth")
