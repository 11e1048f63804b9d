"""API dialects other than the pages' own: thin translations onto the same products, tasks and ledger."""
