"""Storage: the embedded/remote Postgres connection, ORM models, and every SQL
statement the system runs (``repository``)."""
