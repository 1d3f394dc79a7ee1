"""The exception the local-server code raises for expected failures (shown to users as one line)."""


class DbServerError(RuntimeError):
    """Installing, starting, stopping or querying the local Neo4j server failed for a known reason."""
