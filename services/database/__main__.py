"""`python -m services.database`: run the database step's consumer."""

from services.worker import main

if __name__ == "__main__":
    main("database")
