"""MPI: one thread per process owns every MPI call; the asyncio loop never blocks on MPI."""
