"""`python -m services.storage`: run the storage step's consumer."""

from services.worker import main

if __name__ == "__main__":
    main("storage")
