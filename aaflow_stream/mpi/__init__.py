"""MPI: one thread per process owns every MPI call (DESIGN.md section 2)."""
