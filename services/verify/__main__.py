"""`python -m services.verify`: run the verify step's consumer."""

from services.worker import main

if __name__ == "__main__":
    main("verify")
