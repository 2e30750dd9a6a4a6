"""`python -m services.schema`: run the schema step's consumer."""

from services.worker import run_worker

if __name__ == "__main__":
    run_worker("schema")
