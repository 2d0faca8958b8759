"""Helpers only the tests, scripts, experiments and benchmarks use; not part of the wheel:
the paper profile's tiny stand-in models built from config (`paper_standins`), hostile and
faulty clients (`faults`) and repository-relative paths for committed results (`portable_paths`)."""
