"""`python -m services.auth`: run the auth step's consumer."""

from services.worker import main

if __name__ == "__main__":
    main("auth")
