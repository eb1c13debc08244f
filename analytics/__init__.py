"""Analytics on the verdicts in ClickHouse: replay-safe views, the drift reference, the SQL
cookbook, ``lineguard report`` and ``lineguard roi``."""
