"""The API's routes by concern, each an ``APIRouter`` at module level."""
