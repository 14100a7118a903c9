"""`pinproxy check --live`: compare each exact host rule with the host's current chain
(being written)."""
