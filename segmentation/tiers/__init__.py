"""What the business consumes: the customer tier table, its history, migrations and events."""
