"""Integration tests: real gunicorn/uvicorn servers running the example project
(``example/``) against real PostgreSQL and MariaDB, with server-side evidence read
over separate raw driver connections. Marked ``servers``; see ``servers.py``."""
