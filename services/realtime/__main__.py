"""`python -m services.realtime`: run the realtime step's consumer."""

from services.worker import main

if __name__ == "__main__":
    main("realtime")
