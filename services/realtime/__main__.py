"""`python -m services.realtime`: run the realtime step's consumer."""

from services.worker import run_worker

if __name__ == "__main__":
    run_worker("realtime")
