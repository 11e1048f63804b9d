"""Task records, their state machine, the submit path and the DBOS workflows that drive engines."""
