"""`vhdtool bench` and the measuring it shares with the scripts in benchmarks/."""
