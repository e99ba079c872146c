"""apalis-client's SQL-to-Python generator and the PostgreSQL finder it shares with the tests."""

__version__ = "0.1.0"
