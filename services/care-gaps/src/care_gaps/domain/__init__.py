"""Pure transition-of-care rules (no I/O): windows, exclusions, evidence, readmissions,
priority, ownership and the overdue clocks."""
