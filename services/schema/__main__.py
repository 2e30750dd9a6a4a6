"""`python -m services.schema`: run the schema step's consumer."""

from services.worker import main

if __name__ == "__main__":
    main("schema")
