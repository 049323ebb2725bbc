"""Pure rules of the referrals service: routing, the candidate index and leakage (no I/O)."""
